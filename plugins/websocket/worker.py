"""The kernel's side of one worker slot on a remote node.

A node runs one worker process per slot; the kernel sees each slot as one
:class:`~microkernel.services.execution_manager.executors.Worker`, so a slot behaves exactly as a local worker does
(calls in submission order, pinned instances, crashes failing what it held) and the
pool needs nothing node-specific. The node's connection (``session.Session``) carries
the frames and tells its slots when the node turns unhealthy, returns, or is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

from microkernel.services.execution_manager.errors import WorkerStartError
from microkernel.services.execution_manager.executors import (
    Attempt,
    ErrorInfo,
    WorkerBase,
    WorkerInfo,
    WorkerState,
)
from microkernel.services.execution_manager.wire import protocol as p

_S = WorkerState


class SlotHub(Protocol):
    """What a slot needs of the hub (``hub.NodeHub``): a free slot to run on."""

    async def bind(self, slot: NodeSlot, timeout: float) -> None:
        """Attach ``slot`` to a free slot of a connected node, within ``timeout`` s.

        :raises WorkerStartError: none came free in time.
        """
        ...


class NodeConnection(Protocol):
    """What a slot needs of its node's connection (``session.Session``)."""

    node_id: str
    address: str
    offer: dict[str, float]
    cpu_percent: float
    closed: bool
    calls: dict[int, NodeSlot]  # call id -> the slot it was sent to

    @property
    def replace_slots(self) -> bool: ...

    def send(self, data: bytes) -> None: ...


class NodeSlot(WorkerBase):
    """One worker process of a remote node.

    Made bound to a slot by the hub when a node announces it, or unbound
    (``NodeHub.slot_executor``), in which case :meth:`start` waits up to
    ``startTimeout`` seconds for a free slot of any connected node.
    """

    node_type = "node"
    knows_begun = True  # the node agent says which calls its dead worker had begun (SLOT_DOWN)

    def __init__(
        self, worker_id: str, options: Mapping[str, Any] | None = None, *,
        hub: SlotHub, session: NodeConnection | None = None, slot: int = 0, pid: int | None = None,
    ) -> None:
        super().__init__(worker_id, options)
        self.hub = hub
        self.session = session
        self.slot = slot
        self.pid = pid
        self.cpu_percent = 0.0
        self.rss = 0
        self._exit_reason: str | None = None
        self._stopping = False
        self._down: asyncio.Future[None] | None = None

    def info(self) -> WorkerInfo:
        s = self.session
        return WorkerInfo(
            pid=self.pid, address=s.address if s else None, width=1, exit_reason=self._exit_reason,
            resources=s.offer if s else {}, node=s.node_id if s else None,
            cpu_percent=self.cpu_percent, rss=self.rss, host_cpu_percent=s.cpu_percent if s else None,
        )

    def _where(self) -> str:
        s = self.session
        node = f"node {s.node_id} ({s.address})" if s else "node ?"
        return f"worker {self.id} (slot {self.slot}, pid {self.pid} on {node})"

    # -- start ------------------------------------------------------------------------

    async def start(self) -> None:
        self.set_state(_S.REGISTERING)
        self._down = asyncio.get_running_loop().create_future()
        if self.session is None:
            timeout = float(self.options.get("startTimeout", 30.0))
            try:
                await self.hub.bind(self, timeout)
            except TimeoutError:
                self.set_state(_S.FAILED)
                raise WorkerStartError(f"worker {self.id}: no node slot became free within {timeout:g} s") from None
        self.set_state(_S.AVAILABLE)

    # -- calls ------------------------------------------------------------------------

    def submit(self, attempt: Attempt) -> None:
        s = self.session
        self._check_accepting(connected=s is not None and not s.closed)
        assert s is not None
        s.send(p.encode(p.SlotCall(self.slot, attempt.id, attempt.kind, attempt.payload, attempt.soft_timeout,
                                  attempt.attempt)))
        s.calls[attempt.id] = self  # after the send: the node starts while this runs
        self._hold(attempt)

    async def tell(self, payload: bytes) -> list[tuple[bool, str]]:
        """The node hands it to the slot's worker process, which answers between calls."""
        s = self.session
        self._check_accepting(connected=s is not None and not s.closed)
        assert s is not None
        return await self._ask(lambda request_id: s.send(p.encode(p.SlotTell(self.slot, request_id, payload))))

    def on_told(self, request_id: int, replies: list[tuple[bool, str]]) -> None:
        """The node's answer to a message (the session routes it here)."""
        self._answered(request_id, replies)

    def cancel(self, task_id: int) -> bool:
        """Ask the node to drop the call; its CANCELLED confirms (the session then drops
        it here), or the call ends as usual if it had begun."""
        s = self.session
        if s is None or s.closed or task_id not in self.inflight:
            return False
        s.send(p.encode(p.SlotCancel(self.slot, task_id)))
        return True

    def stop_running(self, task_id: int, note: str) -> bool:
        s = self.session
        if s is None or s.closed:
            return False
        s.send(p.encode(p.Abort(self.slot, task_id, note)))
        return True  # the node ends the worker process; SLOT_DOWN follows

    def on_reply(self, msg: p.Result | p.Error) -> None:
        call = self.inflight.get(msg.call_id)
        if call is None:
            return  # an attempt already given up: never delivered twice
        call.ran = msg.ran or None  # as the node's worker measured it
        if isinstance(msg, p.Result):
            self._finish(call, (True, msg.payload))
            return
        info = ErrorInfo(msg.type_name, msg.message, msg.traceback, msg.exception)
        theirs = f"{self.session.node_id}:{self.slot}" if self.session else self.id
        if theirs != self.id:  # a claimed slot: the node names its worker otherwise
            info = info._replace(message=info.message.replace(theirs, self.id),
                                 traceback=info.traceback.replace(theirs, self.id))
        self._finish(call, (False, info))

    # -- health -----------------------------------------------------------------------

    def unhealthy(self) -> None:
        if self.state in (_S.AVAILABLE, _S.RUNNING):
            self.set_state(_S.UNHEALTHY)

    def healthy(self) -> None:
        if self.state == _S.UNHEALTHY:
            self.set_state(_S.AVAILABLE)
            if self.inflight:
                self.set_state(_S.RUNNING)

    # -- end --------------------------------------------------------------------------

    def went_down(self, reason: str, exitcode: int | None = None, began: list[int] | None = None) -> None:
        """The slot's process ended on the node, or the node was lost: fail what it
        held and leave the pool. ``began``: the calls held that had begun, where the
        node knows exactly (the rest never began, and run elsewhere at no cost); None:
        every call held may have begun."""
        self._unanswered(reason)
        if self.is_closed:
            return
        how = "was stopped" if self._stopping else reason
        self._exit_reason = reason
        if self.session is not None:
            for call_id in self.inflight:
                self.session.calls.pop(call_id, None)
        self.set_state(_S.TERMINATED if self._stopping else _S.FAILED)
        if began is None:
            self._crash_all(self._where(), how, pid=self.pid, exitcode=exitcode)
        else:
            begun = set(began)
            self._crash_all(self._where(), how, pid=self.pid, exitcode=exitcode,
                            started=lambda call: call.id in begun, exact=True)
        if self._down is not None and not self._down.done():
            self._down.set_result(None)

    @property
    def replaced_when_stopped(self) -> bool:
        """The node starts another worker process in a slot the kernel stops, unless it or
        the kernel is leaving."""
        s = self.session
        return s is not None and not s.closed and s.replace_slots

    async def stop(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        if not self._begin_stop():
            return
        self._stopping = True
        s = self.session
        if s is None or self._down is None:
            self.set_state(_S.TERMINATED)
            return
        if not s.closed:
            await self._let_finish(drain, timeout)
        if not s.closed and not self.is_closed:
            s.send(p.encode(p.StopSlot(self.slot, s.replace_slots)))
            with contextlib.suppress(TimeoutError):  # the node is gone or slow: stop regardless
                async with asyncio.timeout(5.0):
                    await asyncio.shield(self._down)
        self.went_down("was stopped")
        self._terminated()

    def _terminated(self) -> None:
        if self.state != _S.TERMINATED:
            self.set_state(_S.TERMINATED)
