"""Serving HTTP for services, on aiohttp: :mod:`.listen` (bind with limits, TLS and a
JSON answer for every error, aiohttp's own log routed to ours) and :mod:`.bodies`
(reading a request's JSON body and parameters, or a 4xx that names the field). The
execution manager's dashboard and the jobs service's API both serve through these;
nothing here is imported until a service serves."""
