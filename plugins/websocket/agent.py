"""The node agent: ``kernel node --connect ws://HOST:PORT``.

It dials out to the kernel (nothing listens on the node), authenticates, and runs
each slot as a worker of ``--node-type`` (the local worker processes by default,
found through the plugin registry like the kernel finds them), relaying calls and
replies, with heartbeats carrying its psutil metrics. When the kernel goes away it
drops its workers (the kernel has given their calls up) and reconnects with
exponential backoff and full jitter. SIGTERM drains it: the kernel moves pinned
instances away and lets running calls finish, then the node leaves (exit 0); a
second SIGTERM stops it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import platform
import random
import signal
import socket
import ssl
from collections.abc import Mapping
from functools import partial
from typing import Any, cast

import psutil
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus, InvalidURI

from kernel.errors import ExecutionError, RequestError
from kernel.packages import plan_package
from microkernel.services.execution_manager.errors import PoolClosedError, WorkerCrashedError
from microkernel.services.execution_manager.executors import (
    Attempt,
    Background,
    NodeConfig,
    ProcessSampler,
    ReplyFuture,
    Worker,
    WorkerFactory,
    WorkerState,
    package_version,
)
from microkernel.services.execution_manager.wire import NodeSide, ProtocolError, dumps, node as n, protocol as p

from .outbox import FastClientConnection, Outbox, handshake

log = structlog.get_logger("node")
def not_a_kernel(exc: BaseException) -> str | None:
    """What answered instead of a kernel, when ``exc`` says something other than a kernel
    is listening there for sure (an HTTP server that will not upgrade, a server that does
    not speak HTTP); None when a retry may reach one (refused, timed out, cut, a 5xx)."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        if response.status_code >= 500:
            return None
        server = response.headers.get("Server")
        return (f"an HTTP server{f' ({server})' if server else ''} answered {response.status_code} "
                f"{response.reason_phrase} instead of accepting a websocket")
    if isinstance(exc, InvalidMessage) and not isinstance(exc.__cause__, EOFError | OSError):
        return f"something that does not speak HTTP answered ({exc.__cause__ or exc})"
    return None


_FATAL = {n.CLOSE_AUTH: "the kernel refused the token",
          n.CLOSE_VERSION: "the kernel runs another release (wire version) or Python"}


def _plan_packages(packages: dict[str, str]) -> None:
    """Import the kernel's service folders by the same names, where this machine sees them."""
    for package, folder in packages.items():
        if os.path.isdir(folder):
            plan_package(package, folder)


class NodeAgent:
    """Runs one node until drained; see the module docstring."""

    def __init__(self, config: NodeConfig, factory: WorkerFactory) -> None:
        self.config = config
        self.factory = factory
        self.logger = log.bind(node_id=config.node_id)
        self.execs: dict[int, Worker] = {}
        self.draining = False
        self._ws: FastClientConnection | None = None
        self._outbox: Outbox | None = None
        self._bye = False
        self._link: NodeSide | None = None
        self._numbers = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[tuple[bool, bytes]]] = {}
        self._background = Background("node agent")
        self._stop_now = asyncio.Event()
        self._wake = asyncio.Event()  # ends a backoff sleep early (SIGTERM)
        self._joined_once = False  # before that, an answer that is not a kernel's is final
        self._deadline: asyncio.Task[None] | None = None
        self._began: dict[int, list[int]] = {}  # slot -> calls its dead worker had begun, until SLOT_DOWN

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "python": platform.python_version(), "version": package_version(), "cpus": os.cpu_count() or 1,
            "memory": psutil.virtual_memory().total, "slots": c.slots, "labels": dict(c.labels),
            "hostname": socket.gethostname(), "pid": os.getpid(), "node_type": c.node_type,
        }

    # -- the reconnect loop -----------------------------------------------------------

    async def run(self) -> int:
        gc.freeze()  # what starting made stays out of each collection's walk (as in the kernel)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if self._deadline is not None:
                self._deadline.cancel()
            await self._drop_all()

    async def _run(self) -> int:
        c = self.config
        attempt = 0
        context = self._tls()
        while True:
            code: int | None = None
            said = ""  # the kernel's close reason
            try:
                async with connect(
                    c.url, ssl=context, compression=None, max_size=n.HANDSHAKE_MAX_FRAME, proxy=None,
                    open_timeout=10, ping_interval=5.0, ping_timeout=10.0, close_timeout=2.0,
                    max_queue=64, user_agent_header=None, create_connection=FastClientConnection,
                ) as ws:
                    attempt = 0 if await self._session(cast(FastClientConnection, ws)) else attempt
                    code, said = ws.close_code, ws.close_reason or ""
            except ProtocolError as exc:
                self.logger.error("handshake failed", url=c.url, reason=exc.reason)
                return 2
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                stranger = not_a_kernel(exc) if not self._joined_once else None
                if stranger is not None:  # retrying would not change what answers there
                    self.logger.error(f"{c.url} is not a kernel's node listener: {stranger}; nodes connect to the "
                                      "address `kernel run` prints as `kernel node --connect ...` (custom.nodes, "
                                      "8765 by default), not to its dashboard or job API", url=c.url)
                    return 2
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                said = getattr(getattr(exc, "rcvd", None), "reason", "")
                self.logger.warning("cannot reach the kernel", url=c.url, error=str(exc) or type(exc).__name__)
            except InvalidURI as exc:
                self.logger.error("bad kernel URL", url=c.url, error=str(exc))
                return 2
            if self.draining and self._deadline is not None:
                self._deadline.cancel()
            await self._drop_all()
            if code in _FATAL:
                self.logger.error("refused by the kernel", reason=_FATAL[code], code=code, kernel_said=said)
                return 2
            if self.draining or self._stop_now.is_set():
                self.logger.info("node stopped", reason="drained" if self.draining else "stopped")
                return 0
            delay = max(0.05, random.uniform(0, min(c.reconnect_max, c.reconnect_min * 2 ** attempt)))  # full jitter
            attempt += 1
            self.logger.info("reconnecting", delay=round(delay, 2), attempt=attempt)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            # The signal handler may have set it while this waited (mypy narrowed it above).
            if self.draining:
                return 0  # type: ignore[unreachable]

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.url.startswith("wss:"):
            return None
        context = ssl.create_default_context(cafile=self.config.ca_file)
        return context

    def _on_signal(self) -> None:
        if self.draining:
            self.logger.warning("second signal: stopping now")
            self._stop_now.set()
            if self._ws is not None:
                self.spawn(self._ws.close(n.CLOSE_GOING_AWAY, "node stopped"))
            return
        self.draining = True
        self._wake.set()
        self.logger.info("draining: running calls finish, then the node leaves")
        if self._ws is not None and self._link is not None and self._link.is_open:
            self.send(p.encode(p.Draining("SIGTERM")))
            self._deadline = asyncio.get_running_loop().create_task(self._drain_deadline())

    async def _drain_deadline(self) -> None:
        await asyncio.sleep(self.config.drain_timeout)
        self.logger.warning("drain timed out", seconds=self.config.drain_timeout)
        self._stop_now.set()
        if self._ws is not None:
            await self._ws.close(n.CLOSE_GOING_AWAY, "node drain timed out")

    # -- one connection ---------------------------------------------------------------

    async def _session(self, ws: FastClientConnection) -> bool:
        """Serve one connection; True once it was admitted."""
        c = self.config
        link = NodeSide(c.token, node_id=c.node_id, info=self.info())
        await ws.send(link.hello())
        async with asyncio.timeout(10):
            await handshake(ws, link, lambda: link.is_open)
        ws.protocol.max_message_size = link.max_frame
        _plan_packages(link.packages)
        self._ws, self._link, self._outbox = ws, link, Outbox(ws)
        self._bye = False
        ws.on_message = self._on_data
        self._joined_once = True
        self.logger.info("joined the kernel", url=c.url, session=link.session, slots=c.slots)
        for _ in range(c.slots):
            self.spawn(self._start_slot())
        beats = asyncio.get_running_loop().create_task(self._heartbeats(link.heartbeat_interval))
        try:
            async for data in ws:  # what the direct path leaves: text, fragments, the end
                if isinstance(data, str):
                    await ws.close(n.CLOSE_TEXT, "text frames are not accepted")
                    break
                self._on_data(data)
        except ConnectionClosed:
            pass
        finally:
            ws.on_message = None
            beats.cancel()
            self._ws = self._link = self._outbox = None
            self._fail_requests()
        if not self._bye:
            self.logger.warning("lost the kernel", code=ws.close_code, reason=ws.close_reason)
        return True

    def _on_data(self, data: bytes) -> None:
        ws, link = self._ws, self._link
        if ws is None or link is None:
            return
        try:
            for msg in link.receive_data(data):
                if type(msg) is p.Bye:
                    self.logger.info("the kernel said goodbye", reason=msg.reason)
                    self._bye = True
                    self.spawn(ws.close(n.CLOSE_NORMAL, "bye"))
                    return
                self._handle(msg)
        except ProtocolError as exc:
            self.logger.error("the kernel broke the protocol", reason=exc.reason)
            self.spawn(ws.close(exc.code, exc.reason))

    def send(self, data: bytes) -> None:
        if self._outbox is not None:
            self._outbox.put(data)

    def spawn(self, coro: Any) -> None:
        self._background.spawn(coro)

    # -- calls ------------------------------------------------------------------------

    def _handle(self, msg: Any) -> None:
        kind = type(msg)
        if kind is p.SlotCall:
            ex = self.execs.get(msg.slot)
            if ex is None:
                return  # the slot is gone; its SLOT_DOWN tells the kernel
            future = ReplyFuture()
            future.call = Attempt(msg.call_id, msg.kind, msg.payload, future, soft_timeout=msg.soft_timeout,
                                  attempt=msg.attempt)
            future.follow_now(partial(self._replied, msg.slot, msg.call_id, ex))  # sent in the turn the worker answers
            with contextlib.suppress(PoolClosedError):
                ex.submit(future.call)
        elif kind is p.SlotCancel:
            ex = self.execs.get(msg.slot)
            if ex is not None:
                ex.cancel(msg.call_id)  # its worker confirms the drop: CANCELLED goes out from _replied
        elif kind is p.Abort:
            ex = self.execs.get(msg.slot)
            if ex is not None:
                ex.abort(msg.call_id, msg.reason)
        elif kind is p.Response:
            answer = self._requests.pop(msg.request_id, None)
            if answer is not None and not answer.done():
                answer.set_result((msg.ok, msg.payload))
        elif kind is p.SlotTell:
            ex = self.execs.get(msg.slot)
            if ex is not None:
                self.spawn(self._tell(msg.slot, msg.request_id, msg.payload, ex))
        elif kind is p.StopSlot:
            ex = self.execs.pop(msg.slot, None)
            if ex is not None:
                self.spawn(self._stop_slot(msg.slot, ex, msg.replace))

    async def _tell(self, slot: int, request_id: int, payload: bytes, ex: Worker) -> None:
        """Relay an operator's message to the slot's worker and its answer back (a worker
        that ends first answers nothing: the kernel's slot fails the message)."""
        try:
            replies = await ex.tell(payload)
        except ExecutionError as exc:
            replies = [(False, f"{type(exc).__name__}: {exc}")]
        self.send(p.encode(p.SlotTold(slot, request_id, replies)))

    # -- executor.CallHost: a running call's traffic goes to the kernel -------------------

    def progress(self, attempt: Attempt, fraction: float, message: str) -> None:
        self.send(p.encode(p.Progress(attempt.id, fraction, message)))

    def log(self, attempt: Attempt, level: str, message: str, fields: Mapping[str, Any]) -> None:
        self.send(p.encode(p.Log(attempt.id, level, message, dict(fields))))

    async def request(self, attempt: Attempt, route: str, payload: bytes) -> tuple[bool, bytes]:
        if self._outbox is None:
            return False, dumps(RequestError(f"request {route!r}: node {self.config.node_id} lost the kernel"))
        request_id = next(self._request_ids)
        answer: asyncio.Future[tuple[bool, bytes]] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = answer
        self.send(p.encode(p.Request(request_id, attempt.id, route, payload)))
        return await answer

    def _fail_requests(self) -> None:
        requests, self._requests = self._requests, {}
        for answer in requests.values():
            if not answer.done():
                answer.set_result((False, dumps(RequestError(f"node {self.config.node_id} lost the kernel"))))

    def _replied(self, slot: int, task_id: int, ex: Worker, future: ReplyFuture) -> None:
        if future.cancelled():  # dropped before it began, as the kernel asked
            self.send(p.encode(p.Cancelled(task_id)))
            return
        exc = future.exception()
        if exc is not None:  # a crash, which SLOT_DOWN reports, with whether this call had begun
            if isinstance(exc, WorkerCrashedError) and exc.started:
                self._began.setdefault(slot, []).append(task_id)
            return
        frame = ex.answer_frame(task_id)  # a local worker's frame: forwarded, not encoded again
        if frame is not None:
            self.send(frame)
            return
        ok, data = future.result()
        ran = future.call.ran or 0.0  # as its worker measured it
        if ok:
            self.send(p.encode(p.Result(task_id, data, ran)))
        else:
            self.send(p.encode(p.Error(task_id, data.type_name, data.message, data.traceback, data.exception, ran)))

    # -- slots ------------------------------------------------------------------------

    async def _start_slot(self) -> None:
        number = next(self._numbers)
        ex = self.factory(f"{self.config.node_id}:{number}", {"keepAnswers": True, **self.config.executor_options})
        try:
            await ex.start()
        except Exception as exc:
            self.logger.error("worker failed to start", slot=number, error=str(exc))
            await asyncio.sleep(1.0)
            if self._ws is not None and not self.draining:
                self.spawn(self._start_slot())
            return
        if self._ws is None or self.draining:
            await ex.stop(drain=False)
            return
        ex.listeners.append(partial(self._on_state, number))
        ex.host = self
        self.execs[number] = ex
        self.send(p.encode(p.SlotUp(number, ex.info().pid or 0)))

    def _on_state(self, number: int, ex: Worker, old: WorkerState, new: WorkerState) -> None:
        if new not in (WorkerState.FAILED, WorkerState.TERMINATED) or self.execs.get(number) is not ex:
            return
        del self.execs[number]
        # The worker fails what it held right after this change of state: SLOT_DOWN
        # goes once it has, with the calls that had begun.
        asyncio.get_running_loop().call_soon(self._slot_down, number, ex, new)

    def _slot_down(self, number: int, ex: Worker, state: WorkerState) -> None:
        reason = ex.info().exit_reason or state.value
        self.logger.warning("worker ended", slot=number, reason=reason)
        began = self._began.pop(number, [])
        # Exact only when every call it held was settled, each saying whether it began.
        known = began if not ex.inflight and ex.knows_begun else None
        self.send(p.encode(p.SlotDown(number, reason, ex.info().exit_code, known)))
        if self._ws is not None and not self.draining:
            self.spawn(self._start_slot())

    async def _stop_slot(self, number: int, ex: Worker, replace: bool) -> None:
        await ex.stop(drain=True, timeout=self.config.drain_timeout)
        self._began.pop(number, None)  # stopped as asked: whatever it still held may have begun
        self.send(p.encode(p.SlotDown(number, "was stopped", None)))
        if replace and self._ws is not None and not self.draining:
            await self._start_slot()

    async def _drop_all(self) -> None:
        """Stop every worker now: the kernel has given their calls up."""
        execs, self.execs = list(self.execs.values()), {}
        await asyncio.gather(*(ex.stop(drain=False) for ex in execs), return_exceptions=True)
        self._began.clear()
        if self._ws is None:
            await self._background.join()

    async def _heartbeats(self, interval: float) -> None:
        sampler: ProcessSampler[int] = ProcessSampler()
        while True:
            await asyncio.sleep(interval)
            pids = {number: ex.info().pid for number, ex in self.execs.items()}
            reading = await asyncio.to_thread(sampler.sample, pids)
            slots = [(number, cpu, rss) for number, (cpu, rss) in reading.processes.items()]
            self.send(p.encode(p.NodeHeartbeat(reading.cpu_percent, reading.memory_percent, slots)))
            self._check_workers(reading.statuses)

    def _check_workers(self, statuses: dict[int, str]) -> None:
        """Liveness of each slot's worker, judged from outside it (as the kernel's monitor
        judges local workers): one stopped or silent past ``worker_timeout`` is killed, and
        SLOT_DOWN tells the kernel which of its calls had begun."""
        for number, ex in list(self.execs.items()):
            why = ex.check_alive(statuses.get(number), self.config.worker_timeout)
            if why is not None:
                self.logger.warning("worker declared dead", slot=number, reason=why)
