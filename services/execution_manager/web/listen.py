"""Serving an aiohttp application on a TCP port, with the errors a user can act on:
shared by the dashboard and by other services' HTTP APIs (the job API)."""

from __future__ import annotations

import errno
import ssl
from pathlib import Path

from aiohttp import web

from kernel.errors import ConfigError


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
        raise ConfigError(path, [(field, why)]) from None
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"{'https' if tls else 'http'}://{shown}:{bound_port}"
