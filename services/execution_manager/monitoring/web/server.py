"""The kernel's HTTP server (aiohttp): dashboard, JSON API, live feed, ``/metrics``.

Read-only views need no token; control endpoints need ``Authorization: Bearer
<admin token>`` (from ``custom.http.adminTokenFile``, else ``$MICROKERNEL_ADMIN_TOKEN``,
else ``admin.token`` in the kernel's data folder, made on first start, where ``kernel
worker`` finds it; ``custom.http.control`` false turns control off). Refusals are logged
with the peer address, never the token, and counted. The live feed (``/api/live``, a
websocket) refuses pages from other origins, so a site the user visits cannot read the
pool through their browser.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from aiohttp import WSMsgType, web

from kernel.errors import KernelError
from kernel.http.bodies import BadRequest
from kernel.http.listen import Limits, json_errors, listen
from kernel.logs import Throttle, log_throttled
from kernel.tokens import data_dir, own_token

from ...errors import WorkerConflictError
from ...settings import ADMIN_TOKEN_FILE, HttpSettings
from ..history import History
from . import control
from .metrics import CONTENT_TYPE, registry_for, render
from .status import services, snapshot

if TYPE_CHECKING:
    from .manager import Manager

log = structlog.get_logger("http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
CHANGES = ("worker-started", "worker-terminated", "worker-recycled", "scaled-up", "scaled-down", "task-failed")


def error(status: int, message: str, **headers: str) -> web.Response:
    """A JSON error body ``{"error": message}`` (every 4xx and 5xx here has one)."""
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _netloc(url: str) -> str | None:
    try:
        return urlsplit(url).netloc
    except ValueError:  # `Origin: http://[`: from nowhere this kernel answers
        return None


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str)


class WebServer:
    """Serves one execution manager over HTTP (see the module docstring)."""

    def __init__(self, em: Manager, settings: HttpSettings, history: History) -> None:
        self.em = em
        self.settings = settings
        self.history = history
        self.refusals: Counter[str] = Counter()
        self.address = ""
        self._token: bytes | None = None
        self.registry = registry_for(em, history)
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._feeds: set[web.WebSocketResponse] = set()
        self._throttle = Throttle()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[json_errors("/api"), self._check_host])
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/live", self.live)
        r.add_get("/api/status", self.view(None))
        for part in ("workers", "nodes", "services", "failures", "projects", "scaling", "exited", "pool"):
            r.add_get(f"/api/{part}", self.view(part))
        r.add_get("/api/stats", self.stats)
        r.add_get("/api/workers/{worker_id}", self.worker)
        r.add_post("/api/workers/{worker_id}/drain", self.admin(control.drain))
        r.add_post("/api/workers/{worker_id}/stop", self.admin(control.stop))
        r.add_post("/api/workers/{worker_id}/restart", self.admin(control.restart))
        r.add_post("/api/calls/{task_id}/revoke", self.admin(control.revoke))
        r.add_post("/api/workers/{worker_id}/message", self.admin(control.message))
        r.add_post("/api/scale", self.admin(control.scale))
        r.add_put("/api/projects/{project}/limit", self.admin(control.project_limit))
        return app

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Served on a loopback address, answer only requests addressed to one: a page
        elsewhere cannot reach it through a DNS name rebound to 127.0.0.1."""
        if self.settings.host in LOOPBACK:
            try:
                name = urlsplit(f"http://{request.host}").hostname or ""
            except ValueError:  # `Host: [`
                name = ""
            if name not in LOOPBACK:
                self._refuse(request, "host", host=request.host)
                return error(403, f"this kernel answers on a loopback address only, not to Host {request.host!r}")
        return await handler(request)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> str:
        """Serve; return ``http://HOST:PORT``.

        :raises ConfigError: the port is taken or the address unusable (names the
            ``custom.http`` field to change), or the token file is unreadable.
        """
        s = self.settings
        path = self.em.kernel.manifest_path(self.em.name)
        token_source = None
        if s.control:
            self._token, token_source = own_token(s.admin_token_env, s.admin_token_file, folder=data_dir(),
                                                  name=ADMIN_TOKEN_FILE, what="admin token")
        for event in CHANGES:
            self.em.events.subscribe(event, lambda _e, _p: self._changed.set())
        self._runner, self.address = await listen(self.app(), s.host, s.port, settings="custom.http", path=path,
                                                  limits=Limits(s.client_timeout, s.max_connections))
        log.info("dashboard serving", address=self.address, control="on" if self._token else "off",
                 admin_token=token_source)
        return self.address

    async def stop(self) -> None:
        for ws in list(self._feeds):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- reading ----------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """The snapshot, shared by everyone who asks within a tenth of a push interval."""
        now = time.monotonic()
        if self._cache is None or now - self._cache[0] > self.settings.push_interval / 10:
            self._cache = (now, await snapshot(self.em, self.history))
        return self._cache[1]

    def view(self, part: str | None) -> Handler:
        """GET handler for the whole snapshot (None) or one part of it."""
        async def handler(request: web.Request) -> web.Response:
            status = await self.status()
            return web.json_response(status if part is None else status[part], dumps=_dumps)
        return handler

    async def worker(self, request: web.Request) -> web.Response:
        """One worker, as in the status document's ``workers``; 404 naming the workers."""
        worker_id = request.match_info["worker_id"]
        workers = (await self.status())["workers"]
        for w in workers:
            if w["id"] == worker_id:
                return web.json_response(w, dumps=_dumps)
        known = ", ".join(sorted(w["id"] for w in workers)) or "none"
        return error(404, f"no worker {worker_id[:100]!r} (workers: {known})")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(text=(await self.em.get_stats()).model_dump_json())

    async def page(self, request: web.Request) -> web.Response:
        html = resources.files(__package__).joinpath("dashboard.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html", headers={"X-Content-Type-Options": "nosniff"})

    async def healthz(self, request: web.Request) -> web.Response:
        pool = self.em.pool
        states = {s["name"]: s["state"] for s in services(self.em)}
        ok = pool is not None and not pool.closed and all(v == "running" for v in states.values())
        return web.json_response({"status": "ok" if ok else "degraded", "services": states}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(self.registry), headers={"Content-Type": CONTENT_TYPE})

    async def live(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and _netloc(origin) != request.host:
            self._refuse(request, "origin", origin=origin)
            return error(403, f"origin {origin} may not read this kernel's live feed")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4096)
        await ws.prepare(request)
        self._feeds.add(ws)
        reader = asyncio.create_task(self._drain_incoming(ws))
        try:
            while not ws.closed and not reader.done():
                await ws.send_str(_dumps(await self.status()))
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), self.settings.push_interval)
                    await asyncio.sleep(0.05)  # a burst of changes makes one update
                except TimeoutError:
                    pass
        except (ConnectionError, RuntimeError):  # the page went away mid-send
            pass
        finally:
            reader.cancel()
            self._feeds.discard(ws)
            await ws.close()
        return ws

    async def _drain_incoming(self, ws: web.WebSocketResponse) -> None:
        async for msg in ws:  # the page sends nothing; this notices it closing
            if msg.type == WSMsgType.ERROR:
                break

    # -- control ----------------------------------------------------------------------

    def admin(self, action: Callable[[Manager, web.Request], Awaitable[web.Response]]) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            refused = self._check_token(request)
            if refused is not None:
                return refused
            try:
                return await action(self.em, request)
            except BadRequest as exc:
                return error(exc.status, str(exc))
            except WorkerConflictError as exc:  # leaving already, or of a kind that cannot
                return error(409, str(exc))
            except LookupError as exc:  # no such worker or call
                return error(404, str(exc).strip("'\""))
            except (ValueError, KernelError) as exc:
                return error(400, str(exc).strip("'\""))
        return handler

    def _check_token(self, request: web.Request) -> web.Response | None:
        if self._token is None:
            self._refuse(request, "control-off")
            return error(403, "control is off: custom.http.control of the execution manager is false")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            self._refuse(request, "no-token")
            return error(401, "this endpoint needs the admin token: Authorization: Bearer <token>",
                         **{"WWW-Authenticate": 'Bearer realm="microkernel"'})
        if not hmac.compare_digest(given.strip().encode(), self._token):
            self._refuse(request, "wrong-token")
            return error(403, "wrong admin token")
        return None

    def _refuse(self, request: web.Request, reason: str, **fields: Any) -> None:
        self.refusals[reason] += 1
        log_throttled(log, self._throttle, "warning", "http request refused", reason=reason, peer=request.remote,
                      method=request.method, path=request.path[:200], **{k: str(v)[:200] for k, v in fields.items()})
