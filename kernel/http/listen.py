"""Serving an aiohttp application on a TCP port, with the errors a user can act on:
shared by the dashboard and by other services' HTTP APIs (the job API)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from kernel.errors import ConfigError
from kernel.logs import Throttle, log_throttled

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("http")


def json_errors(prefix: str = "/") -> Middleware:
    """A middleware: aiohttp's own answers for paths under ``prefix`` (404 for an unknown
    path, 405 for a method a path does not take...) as JSON ``{"error": ...}``, like the
    API's own, rather than plain text; their headers (``Allow``) kept. An error no
    handler expected is a JSON 500, logged through structlog (throttled), never aiohttp's
    plain-text traceback."""
    throttle = Throttle()

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
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            log_throttled(log, throttle, "error", "request failed", method=request.method, path=request.path[:200],
                          peer=request.remote, error=f"{type(exc).__name__}: {str(exc)[:200]}", exc_info=True)
            return web.json_response({"error": "the server failed on this request (its log says why)"}, status=500)

    return middleware


class _ToStructlog(logging.Handler):
    """aiohttp's own server log (a request it could not parse, an error past every
    handler) as our log lines: a malformed request is one throttled refusal, without the
    traceback aiohttp would print as plain text."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle = Throttle()

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):  # aiohttp has answered it 400 already
            reason = f"{type(exc).__name__}: {str(exc.message).splitlines()[0] if exc.message else exc}"
            log_throttled(log, self.throttle, "warning", "http request refused", reason=reason[:200])
        elif record.levelno >= logging.WARNING:
            log_throttled(log, self.throttle, "error", record.getMessage()[:200], exc_info=record.exc_info)


_server_log = logging.getLogger("microkernel.http.server")
_server_log.propagate = False
_server_log.addHandler(_ToStructlog())


class Limits(NamedTuple):
    """What one HTTP server lets a client hold (``custom.http`` and ``custom.api``)."""

    client_timeout: float = 5.0  # seconds a connection may sit idle or take over a request's headers
    max_connections: int = 256  # open at once; past it a new one gets 503 and is closed


DEFAULT_LIMITS = Limits()
_FULL = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"


class _Full(asyncio.Protocol):
    """What a connection past the cap talks to: one 503, then the door."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writing = cast(asyncio.Transport, transport)  # (uvloop's is not an asyncio.Transport subclass)
        writing.write(_FULL + b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body)
        writing.close()


class _CappedSite(web.TCPSite):
    """aiohttp's TCP site with a cap on open connections: an idle or slow client holds a
    descriptor each, and a thousand of them would starve the kernel's other servers."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, tls: ssl.SSLContext | None, cap: int,
                 name: str) -> None:
        super().__init__(runner, host, port, ssl_context=tls)
        self._cap, self._label = cap, name
        self._full_said = False
        self._full = json.dumps({"error": f"{name} is at its limit of {cap} connections; try again"}).encode()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # TCPSite.start, with the factory below in place of the server
        server = self._runner.server
        assert server is not None

        def factory() -> asyncio.Protocol:
            if len(server.connections) < self._cap:
                self._full_said = False
                return server()
            if not self._full_said:  # once each time it fills up
                self._full_said = True
                log.warning("connection cap reached: new connections get 503 until some close",
                            server=self._label, cap=self._cap)
            return _Full(self._full)

        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


async def listen(app: web.Application, host: str, port: int, *, settings: str, path: Path,
                 tls: ssl.SSLContext | None = None, limits: Limits = DEFAULT_LIMITS) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (``tls``: over HTTPS), holding clients to ``limits``;
    the runner (clean it up to stop) and the base URL.

    :raises ConfigError: the port is taken or the address unusable, naming the field to
        change (``settings`` is where host and port are set, e.g. ``custom.http``) in the
        manifest at ``path``.
    """
    # keepalive_timeout: aiohttp closes a connection idle, or still sending a request's
    # headers, this long (a slowloris client included), from its first byte on.
    # auto_decompress off: a garbage gzip body failed in aiohttp's parser, past the
    # handlers' reach; our bodies are small JSON, and a compressed one is refused (415).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0, auto_decompress=False,
                           keepalive_timeout=limits.client_timeout, lingering_time=limits.client_timeout,
                           logger=_server_log)
    await runner.setup()
    site = _CappedSite(runner, host, port, tls, reserve_descriptors(limits.max_connections, settings), settings)
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


RESERVE = 256  # descriptors kept for the kernel's own files, workers and stores, whatever servers hold
_granted: dict[str, int] = {}


def reserve_descriptors(wanted: int, server: str) -> int:
    """Grant ``server`` up to ``wanted`` connections out of the descriptors left after the
    other servers' grants and :data:`RESERVE` (so that the job store can always open its
    files). The kernel raised its soft ``RLIMIT_NOFILE`` to the hard limit at start."""
    try:
        import resource
    except ImportError:  # not on this platform: trust the setting
        return wanted
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    others = sum(n for name, n in _granted.items() if name != server)
    granted = max(16, min(wanted, soft - RESERVE - others))
    if granted < wanted:
        log.warning("fewer connections than asked: the process may open few files", server=server, wanted=wanted,
                    granted=granted, nofile=soft)
    _granted[server] = granted
    return granted
