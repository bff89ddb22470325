"""The kernel's end: a websocket server that admits nodes and adopts their slots.

Each connection is authenticated (:mod:`microkernel.services.execution_manager.wire.node`) within
``authTimeout`` before anything it sends is acted on; a refused one is closed with a
documented code, logged with its peer address (never the token) and counted. An
admitted node becomes a :class:`Session` whose slots are handed to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import platform
import ssl
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kernel.errors import ConfigError, PluginError
from kernel.logs import Throttle, log_throttled
from kernel.packages import service_packages
from microkernel.services.execution_manager.executors import (
    Background,
    NodeHost,
    NodeInfo,
    NodeListener,
    package_version,
)
from microkernel.services.execution_manager.wire import NodeKernelSide, ProtocolError, State, node as n, protocol as p

from .outbox import FastServerConnection, handshake
from .session import Session, SessionState
from .settings import HubSettings
from .worker import NodeSlot

log = structlog.get_logger("nodes")

_REASONS = {
    n.CLOSE_TEXT: "text-frame", n.CLOSE_TOO_BIG: "too-big", n.CLOSE_PROTOCOL: "protocol",
    n.CLOSE_AUTH: "auth", n.CLOSE_AUTH_TIMEOUT: "auth-timeout", n.CLOSE_VERSION: "version",
    n.CLOSE_DUPLICATE: "duplicate-id", n.CLOSE_NOT_ASSIGNED: "not-assigned", n.CLOSE_HEARTBEAT: "heartbeat",
    n.CLOSE_TRY_LATER: "too-many-waiting",
}


def peer_of(ws: FastServerConnection) -> str:
    addr = ws.remote_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


class NodeHub(NodeListener):
    """Listens for nodes; see :class:`microkernel.services.execution_manager.executors.NodeListener`."""

    def __init__(self, settings: HubSettings, token: bytes) -> None:
        self.settings = settings
        self._token = token
        self.host: NodeHost | None = None
        self.sessions: dict[str, Session] = {}
        self.address = ""
        self.closing = False
        self._server: Server | None = None
        self._refused: collections.Counter[str] = collections.Counter()
        self._free: deque[tuple[Session, int, int]] = deque()  # slots no executor claimed yet
        self._claims: deque[tuple[NodeSlot, asyncio.Future[None]]] = deque()
        self._monitor: asyncio.Task[None] | None = None
        self._background = Background("node hub")
        self._waiting = 0  # connections not yet authenticated
        self._throttle = Throttle()  # refusals logged: a flood of them cannot fill the disk

    def __repr__(self) -> str:
        return f"<NodeHub {self.address or 'stopped'} nodes={len(self.sessions)}>"

    # -- NodeListener -----------------------------------------------------------------

    async def start(self, host: NodeHost | None = None) -> str:
        s = self.settings
        self.host = host
        context = self._tls()
        try:
            self._server = await serve(
                self._connection, s.host, s.port, ssl=context, compression=None,
                max_size=n.HANDSHAKE_MAX_FRAME, ping_interval=None, open_timeout=s.auth_timeout,
                close_timeout=2.0, max_queue=64, logger=None, server_header=None,
                create_connection=FastServerConnection,
            )
        except OSError as exc:
            raise PluginError(
                f"cannot listen for nodes on {s.host}:{s.port}: {exc.strerror or exc}; "
                f"change custom.nodes.port (or host) of the execution manager"
            ) from exc  # the OSError tells a port in use apart
        sock = next(iter(self._server.sockets))
        host_, port = sock.getsockname()[:2]
        self.address = f"{'wss' if context else 'ws'}://{host_}:{port}"
        self._monitor = asyncio.get_running_loop().create_task(self._watch())
        log.info("listening for nodes", address=self.address)
        return self.address

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.cert_file is None or s.key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(s.cert_file, s.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(s.cert_file, [("custom.nodes.certFile/keyFile", f"cannot load: {exc}")]) from None
        return context

    def stop_accepting(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close(close_connections=False)

    async def stop(self) -> None:
        self.stop_accepting()
        if self._monitor is not None:
            self._monitor.cancel()
        for session in list(self.sessions.values()):
            session.send(p.encode(p.Bye("the kernel is shutting down")))
            session.lose("left: the kernel is shutting down", n.CLOSE_GOING_AWAY)
        for _slot, waiter in self._claims:
            if not waiter.done():
                waiter.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        await self._background.join()

    def nodes(self) -> list[NodeInfo]:
        now = time.monotonic()
        return [s.describe(now) for s in self.sessions.values()]

    def refusals(self) -> Mapping[str, int]:
        return dict(self._refused)

    # -- slots ------------------------------------------------------------------------

    def slot_executor(self, worker_id: str, options: Mapping[str, Any] | None = None) -> NodeSlot:
        """An unbound slot executor: its ``start()`` takes the next free node slot."""
        return NodeSlot(worker_id, options, hub=self)

    async def bind(self, slot: NodeSlot, timeout: float) -> None:
        while self._free:
            session, number, pid = self._free.popleft()
            if not session.closed:
                session.attach(slot, number, pid)
                return
        waiter = asyncio.get_running_loop().create_future()
        self._claims.append((slot, waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            if not waiter.done():
                waiter.cancel()

    def slot_up(self, session: Session, number: int, pid: int) -> None:
        """A node announced a slot: bind a waiting claim, adopt it, or keep it free."""
        while self._claims:
            slot, waiter = self._claims.popleft()
            if not waiter.done():
                session.attach(slot, number, pid)
                waiter.set_result(None)
                return
        if self.host is None:
            self._free.append((session, number, pid))
            return
        slot = NodeSlot(f"{session.node_id}:{number}", {}, hub=self)
        session.attach(slot, number, pid)
        self.spawn(self._adopt(slot))

    async def _adopt(self, slot: NodeSlot) -> None:
        await slot.start()
        if self.host is not None and not slot.is_closed:
            self.host.adopt(slot)

    def retire(self, session: Session, reason: str) -> None:
        """The node is draining: retire its slots through the pool (pins move first)."""
        for slot in list(session.slots.values()):
            if self.host is not None:
                self.spawn(self.host.retire(slot.id, reason))
            else:
                self.spawn(slot.stop(drain=True))

    def spawn(self, coro: Any) -> None:
        self._background.spawn(coro)

    # -- connections ------------------------------------------------------------------

    def refuse_count(self, code: int, peer: str, reason: str, node_id: str = "") -> None:
        self._refused[_REASONS.get(code, str(code))] += 1
        log_throttled(log, self._throttle, "warning", "node connection refused", peer=peer, node_id=node_id or None,
                      code=code, reason=reason[:200])

    async def _connection(self, conn: ServerConnection) -> None:
        ws = cast(FastServerConnection, conn)  # serve() makes them (create_connection)
        peer = peer_of(ws)
        if self.closing:
            await ws.close(n.CLOSE_GOING_AWAY, "the kernel is shutting down")
            return
        if self._waiting >= self.settings.max_waiting:
            reason = f"{self._waiting} connections are waiting to authenticate already; try again later"
            self.refuse_count(n.CLOSE_TRY_LATER, peer, reason)
            await ws.close(n.CLOSE_TRY_LATER, reason)
            return
        link = NodeKernelSide(self._token, max_frame=self.settings.max_frame)
        self._waiting += 1
        try:
            async with asyncio.timeout(self.settings.auth_timeout):
                await handshake(ws, link, lambda: link.state is State.READY)
        except TimeoutError:
            reason = f"no authentication within {self.settings.auth_timeout:g} s"
            self.refuse_count(n.CLOSE_AUTH_TIMEOUT, peer, reason, link.node_id)
            await ws.close(n.CLOSE_AUTH_TIMEOUT, reason)
            return
        except ProtocolError as exc:
            self.refuse_count(exc.code, peer, exc.reason, link.node_id)
            await ws.close(exc.code, exc.reason)
            return
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == n.CLOSE_TOO_BIG:
                self.refuse_count(n.CLOSE_TOO_BIG, peer, "message over the handshake limit")
            return
        finally:
            self._waiting -= 1
        node_id = link.node_id
        other = self.sessions.get(node_id)
        if other is not None:
            reason = (f"node id {node_id!r} is already connected (from {other.address}); "
                      f"give each node its own --node-id")
            self.refuse_count(n.CLOSE_DUPLICATE, peer, reason, node_id)
            await ws.close(n.CLOSE_DUPLICATE, reason)
            return
        python = str(link.info.get("python", ""))
        if python.split(".")[:2] != platform.python_version().split(".")[:2]:
            reason = (f"node runs Python {python or '?'}, the kernel {platform.python_version()}: "
                      f"calls are pickled, so both need the same Python minor version")
            self.refuse_count(n.CLOSE_VERSION, peer, reason, node_id)
            await ws.close(n.CLOSE_VERSION, reason[:120])
            return
        theirs, ours = str(link.info.get("version", "")), package_version()
        if theirs != ours:  # not refused: a rolling upgrade passes through this
            log.warning("node runs another package version", node_id=node_id, peer=peer, node_version=theirs,
                        kernel_version=ours)
        # The kernel may have begun to stop while the handshake ran (mypy narrowed it above).
        if self.closing:
            await ws.close(n.CLOSE_GOING_AWAY, "the kernel is shutting down")  # type: ignore[unreachable]
            return
        session = Session(self, ws, link, peer)
        self.sessions[node_id] = session
        ws.protocol.max_message_size = self.settings.max_frame
        await ws.send(link.welcome(uuid.uuid4().hex, self.settings.heartbeat_interval, self.settings.max_frame,
                                   service_packages()))
        log.info("node joined", node_id=node_id, peer=peer, slots=link.info.get("slots"),
                 python=link.info.get("python"))
        await session.serve()

    def forget(self, session: Session) -> None:
        """A session ended: its node id is free again, its slots are gone."""
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
        self._free = deque(f for f in self._free if f[0] is not session)

    async def _watch(self) -> None:
        """Unhealthy after ``heartbeatTimeout`` s of silence, failed after ``failAfter``."""
        s = self.settings
        while True:
            await asyncio.sleep(min(s.heartbeat_interval, 0.5))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                silent = now - session.last_seen
                if silent > s.fail_after:
                    reason = f"sent nothing for {silent:.1f} s (failAfter {s.fail_after:g} s)"
                    self.refuse_count(n.CLOSE_HEARTBEAT, session.address, reason, session.node_id)
                    session.lose(f"failed: {reason}", n.CLOSE_HEARTBEAT)
                elif silent > s.heartbeat_timeout and session.state is SessionState.AVAILABLE:
                    log.warning("node unhealthy", node_id=session.node_id, peer=session.address,
                                silent=round(silent, 1))
                    session.set_unhealthy()
