"""The kernel's side of one Dask worker: calls become Dask tasks restricted to it.

One :class:`DaskWorker` per worker of the cluster, adopted into the pool as a remote
node's slots are. It hands Dask the calls the pool gives it (up to ``PIPELINE`` per thread)
(so the scheduler's round trips overlap) and holds the rest itself; Dask starts a
worker's tasks in submission order. Calls on pinned instances go one at a time, so
they never overlap and run in call order. Dask's own errors (a cancelled future,
``KilledWorker``, a lost scheduler) are translated here into
:class:`WorkerCrashedError` naming the Dask worker. Results come back through the
client's :class:`~.collect.Results` (many per gather), which also lets go of finished
futures in bulk. Each task reports how long its call ran, so the
pool tells the work from Dask's transit (:attr:`overhead`).

The gap (README "From one machine to a cluster"): Dask cannot interrupt a task running
on a thread, and the client cannot tell a task queued on the worker from one running.
So :meth:`DaskWorker.cancel` drops only calls not yet handed to Dask (a call handed over
is never reported dropped, so it is never run twice); :meth:`abort` cancels the future,
fails the call at once and lets the thread finish (its side effects may happen).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from microkernel.services.execution_manager.errors import WorkerCrashedError
from microkernel.services.execution_manager.executors import (
    Attempt,
    Background,
    WorkerBase,
    WorkerInfo,
    WorkerState,
)
from microkernel.services.execution_manager.wire import protocol as p

from . import remote
from .collect import CANCELLED, Results

if TYPE_CHECKING:
    from distributed import Client, Future

_S = WorkerState
_PINNED = frozenset({p.PIN, p.CALL_PINNED, p.UNPIN})
PIPELINE = 64  # calls per thread handed to Dask at most (the pool usually hands over fewer)
log = structlog.get_logger("dask")


class DaskWorker(WorkerBase):
    """One Dask worker (``address``) of the cluster ``client`` is connected to."""

    node_type = "dask"

    def __init__(self, worker_id: str, client: Client, address: str, *, slots: int = 1,
                 results: Results, memory_limit: int | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        super().__init__(worker_id, options)
        self.results = results  # the client's, shared by the cluster's executors
        self.client = client
        self.address = address
        self.slots = max(1, slots)
        self.memory_limit = memory_limit
        self.rss = 0
        self.cpu_percent = 0.0
        self._held: deque[Attempt] = deque()
        self._sent: dict[int, Future[Any]] = {}
        self._pinned_sent = 0
        self._exit_reason: str | None = None
        self._background = Background(f"dask worker {worker_id}")
        self._variables: dict[int, str] = {}  # a request's id -> the Dask Variable its answer goes to
        self._requests = itertools.count(1)

    def info(self) -> WorkerInfo:
        offer: dict[str, float] = {"cpu": float(self.slots)}
        if self.memory_limit:
            offer["memory"] = float(self.memory_limit)
        return WorkerInfo(address=self.address, width=self.slots, exit_reason=self._exit_reason, resources=offer,
                            node=self.address, cpu_percent=self.cpu_percent, rss=self.rss,
                            host_cpu_percent=self.cpu_percent)

    async def start(self) -> None:
        self.set_state(_S.REGISTERING)
        self.set_state(_S.AVAILABLE)

    # -- calls ------------------------------------------------------------------------

    def submit(self, attempt: Attempt) -> None:
        self._check_accepting(where=f" (Dask worker {self.address})")
        self._hold(attempt)
        self._held.append(attempt)
        self._pump()

    def _pump(self) -> None:
        while self._held and len(self._sent) < self.slots * PIPELINE:
            call = self._held[0]
            pinned = call.kind in _PINNED
            if pinned and self._pinned_sent:
                break  # calls on pinned instances run one after another, in order
            self._held.popleft()
            future = self.client.submit(
                remote.run, self.id, call.kind, call.payload, call.id, call.attempt,
                key=f"{call.label}-{self.id}-{call.id}-{call.attempt}",
                workers=[self.address], allow_other_workers=False, pure=False,
            )
            self._sent[call.id] = future
            self._pinned_sent += pinned
            self.results.watch(future, partial(self._done, call, future, pinned, time.perf_counter()))

    def _done(self, attempt: Attempt, future: Future[Any], pinned: bool, sent: float, reply: Any,
              why: str | None) -> None:
        self._pinned_sent -= pinned
        current = self._sent.get(attempt.id) is future and self.inflight.get(attempt.id) is attempt
        if current:
            del self._sent[attempt.id]
        if not current:
            pass  # given up meanwhile (worker lost, aborted), or another attempt's: dropped
        elif why == CANCELLED:
            self._crash(attempt, "cancelled its Dask task")
        elif why is not None:
            self._crash(attempt, f"failed in Dask ({why})")
        else:
            ok, data, ran = reply
            # Dask's part of the round trip; the least seen (slowly forgotten) is transit, the
            # rest waiting at the worker behind calls handed over earlier.
            transit = max(0.0, time.perf_counter() - sent - ran)
            self.overhead = transit if not self.overhead else min(self.overhead * 1.01, transit)
            attempt.ran = ran
            self._finish(attempt, (ok, data))
        self._pump()

    def _crash(self, attempt: Attempt, how: str) -> None:
        self._fail(attempt, WorkerCrashedError(
            f"Dask worker {self.address} ({self.id}) {how} while running {attempt.describe()}",
            worker_id=self.id, call=attempt.describe(), started=True,
        ))

    def cancel(self, task_id: int) -> bool:
        """Drop a call not yet handed to Dask. One handed over may be running there
        already, so it is not dropped (``abort`` stops it by force)."""
        return self._cancel_from(self._held, task_id)

    def abort(self, task_id: int, reason: str = "") -> bool:
        if task_id in self._sent:
            call = self.inflight[task_id]
            return self.stop_running(task_id, reason or f"{call.describe()} was aborted")
        return self.cancel(task_id)

    def stop_running(self, task_id: int, note: str) -> bool:
        """Cancel the call's Dask future and fail the call now. Dask cannot interrupt a
        task already running on a thread: the worker finishes it and drops the result."""
        future = self._sent.pop(task_id, None)
        call = self.inflight.get(task_id)
        if future is None or call is None:
            return self.cancel(task_id)
        self._background.spawn(self._cancel(future))
        self._crash(call, f"was told to stop ({note})")
        self._pump()
        return True

    async def _cancel(self, future: Future[Any]) -> None:
        try:
            await self.client.cancel([future], force=True)
        except Exception as exc:  # the scheduler may be gone: it forgets the task anyway
            log.debug("cancelling a Dask future failed", worker_id=self.id, error=str(exc))

    # -- the worker going away ----------------------------------------------------------

    def lost(self, reason: str) -> None:
        """The Dask worker left the cluster: fail what it held, naming it."""
        if self.is_closed:
            return
        self._exit_reason = reason
        self.set_state(_S.FAILED)
        never_sent = {c.id for c in self._held}  # still here, never handed to Dask: they run elsewhere, free
        self._held.clear()
        self._release_sent()
        self._crash_all(f"Dask worker {self.address} ({self.id})", f"was lost ({reason})", pid=None, exitcode=None,
                        started=lambda c: c.id not in never_sent)

    def _release_sent(self) -> None:
        for future in self._sent.values():
            future.release()
        self._sent.clear()

    async def stop(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        if not self._begin_stop():
            return
        await self._let_finish(drain, timeout)
        held = {c.id for c in self._held}
        self._held.clear()
        self._release_sent()
        self._fail_stopped(held, where=f" (Dask worker {self.address})")
        if self.state != _S.FAILED:
            try:  # free the instances still pinned in its runtime on the Dask worker
                async with asyncio.timeout(min(timeout, 5.0)):
                    await self.client.submit(remote.forget, self.id, workers=[self.address],
                                             allow_other_workers=False, pure=False)
            except Exception as exc:
                log.debug("could not clear the runtime on the Dask worker", worker_id=self.id, error=str(exc))
        self._exit_reason = self._exit_reason or "stopped"
        self.set_state(_S.TERMINATED)

    def traffic(self, message: Mapping[str, Any]) -> None:
        """A running call's progress, log or request, as the Dask worker sent it."""
        kind, call_id, fields = message.get("kind"), int(message.get("call", 0)), tuple(message.get("fields", ()))
        if kind == "progress" and len(fields) == 2:
            self.report_traffic(p.Progress(call_id, *fields), self._answer)
        elif kind == "log" and len(fields) == 3:
            self.report_traffic(p.Log(call_id, *fields), self._answer)
        elif kind == "request" and len(fields) == 3:
            variable, route, payload = fields
            request_id = next(self._requests)
            self._variables[request_id] = str(variable)
            self.report_traffic(p.Request(request_id, call_id, route, payload), self._answer)

    def _answer(self, request_id: int, ok: bool, payload: bytes) -> None:
        from distributed import Variable

        variable = self._variables.pop(request_id, None)
        if variable is None:
            return

        async def send() -> None:
            try:
                await Variable(variable, client=self.client).set((ok, payload))
            except Exception as exc:
                log.warning("could not answer a call's request", worker_id=self.id, error=str(exc))

        self._background.spawn(send())
