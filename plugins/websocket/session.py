"""One admitted node's connection on the kernel's side: routes its frames to its
slots, batches what goes out, tracks its health, and fails its slots when lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from enum import StrEnum
from typing import Any, Protocol

import structlog
from websockets.exceptions import ConnectionClosed

from kernel.errors import RequestError
from microkernel.services.execution_manager.executors import NodeInfo
from microkernel.services.execution_manager.wire import NodeKernelSide, ProtocolError, dumps, node as n, protocol as p

from .outbox import FastServerConnection, Outbox
from .worker import NodeSlot

log = structlog.get_logger("nodes")


class SessionState(StrEnum):
    """A node's session, as the kernel sees it (heartbeats and draining)."""

    AVAILABLE = "available"
    UNHEALTHY = "unhealthy"  # heartbeats missed; failed after failAfter
    DRAINING = "draining"  # the node is leaving: its slots take no new calls


class SessionHub(Protocol):
    """What a node's connection needs of the hub (``hub.NodeHub``) that accepted it."""

    closing: bool  # the hub is stopping: slots are not replaced, no new ones taken

    def slot_up(self, session: Session, number: int, pid: int) -> None:
        """The node announced slot ``number`` (its worker process ``pid``)."""
        ...

    def retire(self, session: Session, reason: str) -> None:
        """Take the node's slots out of the pool (the node drains)."""
        ...

    def forget(self, session: Session) -> None:
        """The connection is gone for good."""
        ...

    def refuse_count(self, code: int, peer: str, reason: str, node_id: str = "") -> None:
        """Count (and log) a connection or message refused with close ``code``."""
        ...


class Session:
    """An authenticated node: its slots, the calls it holds, its last heartbeat."""

    def __init__(self, hub: SessionHub, ws: FastServerConnection, link: NodeKernelSide, address: str) -> None:
        self.hub = hub
        self.ws = ws
        self.link = link
        self.address = address
        self.node_id = link.node_id
        info = link.info
        self.info = info
        labels = info.get("labels") or {}
        self.labels = {str(k): float(v) for k, v in labels.items() if isinstance(v, int | float)}
        self.offer: dict[str, float] = {"cpu": 1.0, "memory": float(info.get("memory") or 0), **self.labels}
        self.slots: dict[int, NodeSlot] = {}
        self.calls: dict[int, NodeSlot] = {}  # call id -> the slot it was sent to
        self.last_seen = time.monotonic()
        self.cpu_percent = 0.0
        self.memory_percent = 0.0
        self.state = SessionState.AVAILABLE
        self.closed = False
        self.outbox = Outbox(ws)
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._close_with: tuple[int, str] | None = None

    def __repr__(self) -> str:
        return f"<Session {self.node_id} {self.address} {self.state} slots={len(self.slots)}>"

    @property
    def replace_slots(self) -> bool:
        """Whether the node should replace a slot the kernel stops (recycling)."""
        return not self.hub.closing and self.state is not SessionState.DRAINING

    def describe(self, now: float) -> NodeInfo:
        return NodeInfo(
            id=self.node_id, address=self.address, state=self.state.value, slots=len(self.slots),
            running=sum(len(s.inflight) for s in self.slots.values()), cpu_percent=self.cpu_percent,
            memory_percent=self.memory_percent, heartbeat_age=round(now - self.last_seen, 3),
            labels=self.labels, python=str(self.info.get("python", "")), version=str(self.info.get("version", "")),
        )

    # -- out --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one turn goes out as one message."""
        self.outbox.put(data)

    # -- in ---------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until the connection ends or the session is lost; then close it."""
        self.ws.on_message = self._on_data
        reader = asyncio.get_running_loop().create_task(self._reader())
        try:
            await asyncio.wait({reader, self._lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.ws.on_message = None
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            code = self.ws.close_code
            self.lose("connection lost" if code is None else
                      f"connection closed ({code}{': ' + self.ws.close_reason if self.ws.close_reason else ''})")
            if self._close_with is not None:
                await self._close(*self._close_with)

    async def _reader(self) -> None:
        """What the direct path leaves: text and fragmented messages, and the end."""
        try:
            async for data in self.ws:
                if isinstance(data, str):
                    self._refused(ProtocolError("text frames are not accepted; send binary msgpack", code=n.CLOSE_TEXT))
                    return
                self._on_data(data)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == n.CLOSE_TOO_BIG:
                self.hub.refuse_count(n.CLOSE_TOO_BIG, self.address, "message over maxFrame", self.node_id)

    def _on_data(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_seen = time.monotonic()
        if self.state is SessionState.UNHEALTHY:
            self.set_healthy()
        try:
            for msg in self.link.receive_data(data):
                self._handle(msg)
        except ProtocolError as exc:
            self._refused(exc)

    def _refused(self, exc: ProtocolError) -> None:
        self.hub.refuse_count(exc.code, self.address, exc.reason, self.node_id)
        self.lose(f"broke the protocol: {exc.reason}", exc.code, exc.reason)

    def _handle(self, msg: Any) -> None:
        kind = type(msg)
        if kind is p.Result or kind is p.Error:
            call_id = msg.call_id
            slot = self.calls.pop(call_id, None)
            if slot is not None:
                slot.on_reply(msg)
            else:
                raise ProtocolError(f"a result for call {call_id!r}, which was not assigned to node {self.node_id}",
                                    code=n.CLOSE_NOT_ASSIGNED)
        elif kind is p.SlotTold:
            slot = self.slots.get(msg.slot)
            if slot is not None:
                slot.on_told(msg.request_id, msg.replies)
        elif kind is p.NodeHeartbeat:
            self.cpu_percent, self.memory_percent = msg.cpu_percent, msg.memory_percent
            for number, cpu, rss in msg.slots:
                slot = self.slots.get(number)
                if slot is not None:
                    slot.cpu_percent, slot.rss = cpu, rss
        elif kind is p.Progress or kind is p.Log:
            slot = self.calls.get(msg.call_id)
            if slot is not None:  # else late: the call was given up here
                slot.report_traffic(msg, self._respond)
        elif kind is p.Request:
            slot = self.calls.get(msg.call_id)
            if slot is None:  # a call given up here (or never assigned): the asker still gets an answer
                self._respond(msg.request_id, False, dumps(RequestError(
                    f"request {msg.route!r} refused: call {msg.call_id!r} is not running on node {self.node_id}")))
                return
            slot.report_traffic(msg, self._respond)
        elif kind is p.Cancelled:  # the node dropped a call before it began, as asked
            slot = self.calls.pop(msg.call_id, None)
            if slot is not None:
                slot._drop(msg.call_id)
        elif kind is p.SlotUp:
            if self.state is not SessionState.DRAINING and not self.hub.closing and msg.slot not in self.slots:
                self.hub.slot_up(self, msg.slot, msg.pid)
        elif kind is p.SlotDown:
            slot = self.slots.pop(msg.slot, None)
            if slot is not None:
                slot.went_down(msg.reason, msg.exitcode, msg.began)
            if self.state is SessionState.DRAINING and not self.slots:
                self._leave()
        elif kind is p.Draining:
            log.info("node draining", node_id=self.node_id, reason=msg.reason)
            self.state = SessionState.DRAINING
            if not self.slots:
                self._leave()
            else:
                self.hub.retire(self, f"node {self.node_id} is draining ({msg.reason})")

    def _respond(self, request_id: int, ok: bool, payload: bytes) -> None:
        if not self.closed:
            self.send(p.encode(p.Response(request_id, ok, payload)))

    def _leave(self) -> None:
        self.send(p.encode(p.Bye("drained")))
        self.lose("left: drained", n.CLOSE_NORMAL)

    def attach(self, slot: NodeSlot, number: int, pid: int) -> None:
        slot.session, slot.slot, slot.pid = self, number, pid
        self.slots[number] = slot

    # -- health and end ---------------------------------------------------------------

    def set_unhealthy(self) -> None:
        self.state = SessionState.UNHEALTHY
        for slot in list(self.slots.values()):
            slot.unhealthy()

    def set_healthy(self) -> None:
        log.info("node healthy again", node_id=self.node_id, peer=self.address)
        self.state = SessionState.AVAILABLE
        for slot in list(self.slots.values()):
            slot.healthy()

    def lose(self, why: str, code: int | None = None, reason: str = "") -> None:
        """End the session: every slot fails what it held; close with ``code``."""
        if self.closed:
            return
        self.closed = True
        self.hub.forget(self)
        if not why.startswith("left"):
            log.warning("node lost", node_id=self.node_id, peer=self.address, reason=why)
        else:
            log.info("node left", node_id=self.node_id, peer=self.address, reason=why)
        slots, self.slots = list(self.slots.values()), {}
        for slot in slots:
            slot.went_down(f"was lost: node {self.node_id} {why}")
        self.calls.clear()
        if code is not None:
            self._close_with = (code, reason or why)
        if not self._lost.done():
            self._lost.set_result(None)

    async def _close(self, code: int, reason: str) -> None:
        self.outbox.flush()
        with contextlib.suppress(ConnectionClosed, TimeoutError, OSError):
            await self.ws.close(code, reason[:120])
