"""Serving an aiohttp application on a TCP port, with the errors a user can act on:
shared by the dashboard and by other services' HTTP APIs (the job API)."""

from __future__ import annotations

import errno
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from kernel.errors import ConfigError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_errors(prefix: str = "/") -> Middleware:
    """A middleware: aiohttp's own answers for paths under ``prefix`` (404 for an unknown
    path, 405 for a method a path does not take...) as JSON ``{"error": ...}``, like the
    API's own, rather than plain text; their headers (``Allow``) kept."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or not request.path.startswith(prefix):
                raise
            message = f"{exc.status} {exc.reason}: {request.method} {request.path}"
            if isinstance(exc, web.HTTPMethodNotAllowed):
                message += f" (allowed: {', '.join(sorted(exc.allowed_methods))})"
            headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
            return web.json_response({"error": message}, status=exc.status, headers=headers)

    return middleware


async def listen(app: web.Application, host: str, port: int, *, settings: str, path: Path,
                 tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (``tls``: over HTTPS); the runner (clean it up to
    stop) and the base URL.

    :raises ConfigError: the port is taken or the address unusable, naming the field to
        change (``settings`` is where host and port are set, e.g. ``custom.http``) in the
        manifest at ``path``.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        taken = exc.errno == errno.EADDRINUSE
        field = f"{settings}.port" if taken else f"{settings}.host"
        why = (f"{host}:{port} is already in use; set {field} to a free port (0: any)" if taken
               else f"cannot serve on {host}:{port}: {exc.strerror or exc}")
        raise ConfigError(path, [(field, why)]) from exc  # the OSError tells a port in use apart
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"{'https' if tls else 'http'}://{shown}:{bound_port}"
