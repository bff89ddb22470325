"""The pool of executors: calls, the queue and dispatch.

Decisions come from :mod:`.policy` and :mod:`.resources`; this module carries them out,
and :mod:`.workers` looks after the workers themselves. The hot path
(:meth:`WorkerPool.submit` -> executor -> ``on_finish``) creates no task per call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import structlog

from .background import Background
from .errors import PoolClosedError, UnsatisfiableError, WorkerStartError
from .events import EventBus
from .executor import Call, CallHost, ExecutorFactory, ReplyFuture, WorkerState
from .history import Timings
from .policy import Limits, inflight_limit, place
from .queue import CallQueue
from .resources import fits, place_with, unsatisfiable
from .settings import Settings
from .workers import PoolWorker, WorkerLifecycle

log = structlog.get_logger("execution-manager")
_CLOSED = (WorkerState.FAILED, WorkerState.TERMINATED)


class WorkerPool(WorkerLifecycle):
    """Executors of one node type, plus an optional in-process worker for idle times."""

    def __init__(
        self,
        settings: Settings,
        factory: ExecutorFactory,
        events: EventBus,
        *,
        local_factory: ExecutorFactory | None = None,
    ) -> None:
        self.settings = settings
        self.limits = Limits(
            settings.min_workers, settings.max_workers, settings.run_locally and local_factory is not None,
            settings.local_threshold, settings.scale_up_threshold, settings.scale_down_threshold,
            settings.memory_limit, settings.idle_timeout, settings.scale_cooldown,
        )
        self.last_scale_up: float | None = None
        self._factory = factory
        self._local_factory = local_factory
        self.events = events
        self.options: Mapping[str, Any] = {"startTimeout": settings.start_timeout, **settings.executor_options}
        self.workers: dict[str, PoolWorker] = {}
        self._members: list[PoolWorker] = []
        self.local: PoolWorker | None = None
        self.queue: CallQueue[Call] = CallQueue(settings.aging_seconds)
        offers = getattr(factory, "offers", None)
        self.new_offer: Mapping[str, float] | None = offers(self.options) if callable(offers) else None
        self.placements: deque[dict[str, Any]] = deque(maxlen=20)  # the last resource-aware choices
        self.held: deque[Call] = deque()  # calls waiting for room in a full queue (maxQueue)
        self._room: deque[asyncio.Future[None]] = deque()  # room() waiters
        self.project_limits: dict[str, int] = dict(settings.project_limits)
        self.project_running: dict[str, int] = {}
        self.starting = 0
        self.stopping = False  # no new calls
        self.closed = False  # no more dispatching either
        self.done = 0
        self.failed = 0
        self.cpu_percent = 0.0
        self.memory_percent = 0.0
        self.last_scaling = "none yet"
        self.on_worker_lost: Callable[[PoolWorker], None] | None = None
        self.on_retire: Callable[[PoolWorker], Awaitable[None]] | None = None
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self.background = Background("pool")  # starts, retirements, drains asked for over HTTP
        self.host: CallHost | None = None  # where running calls' progress, logs and requests go
        self.timings: Timings | None = None  # call durations and queue waits, when someone reads them

    def __repr__(self) -> str:
        busy = sum(1 for s in self._members if s.running)
        return f"<WorkerPool workers={len(self._members)} busy={busy} queued={len(self.queue)}>"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._local_factory is not None and self.limits.run_locally:
            local = self._local_factory("local-0", {"threads": self.settings.local_slots})
            local.host = self.host
            await local.start()
            self.local = PoolWorker(local, limit=self.settings.local_slots)
            local.on_finish = partial(self._finished, self.local)
        results = await asyncio.gather(
            *(self._start_worker() for _ in range(self.settings.min_workers))
        )
        if self.settings.min_workers and not any(results):
            await self.stop()
            raise WorkerStartError(
                f"none of the {self.settings.min_workers} minimum workers "
                f"({self.settings.node_type}) could start; see the log for why"
            )

    async def stop(self, hurry: asyncio.Event | None = None) -> None:
        """Shut down: refuse new calls, run the queue first (``drainQueue``) or cancel
        it, give running calls ``drainTimeout`` seconds, then stop every worker. When
        ``hurry`` is set meanwhile (a second signal), running calls are stopped at once."""
        s = self.settings
        self.stopping = True
        hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else None
        try:
            if s.drain_queue and (self.queue or any(worker.running for worker in self._members)):
                await self._until_idle(s.drain_timeout, hurried)
            self.closed = True
            for waiter in self._room:
                if not waiter.done():
                    waiter.set_result(None)
            self._fail_waiting(PoolClosedError("the execution manager is shutting down"))
            members = list(self._members) + ([self.local] if self.local else [])
            stopping: asyncio.Future[Any] = asyncio.gather(
                *(worker.executor.stop(drain=True, timeout=s.drain_timeout) for worker in members),
                return_exceptions=True,
            )
            if hurried is not None:
                await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
                if hurried.done() and not stopping.done():
                    for worker in members:  # stopping the running call ends its worker at once
                        for call_id in list(worker.executor.inflight):
                            worker.executor.abort(call_id)
            await stopping
        finally:
            if hurried is not None:
                hurried.cancel()
        await self.background.join()

    def _fail_waiting(self, exc: Exception) -> None:
        """Fail every call still waiting (queued or held back by maxQueue) with ``exc``;
        none of them ran."""
        held, self.held = list(self.held), deque()
        for call in [*self.queue.pop_all(), *held]:
            if not call.future.done():
                error = type(exc)(f"{call.describe()} was cancelled before it ran: {exc}")
                call.future.set_exception(error)

    async def _until_idle(self, timeout: float, hurried: asyncio.Future[Any] | None) -> None:
        deadline = time.monotonic() + timeout
        while (self.queue or any(worker.running for worker in self._members)) and time.monotonic() < deadline:
            if hurried is not None and hurried.done():
                return
            await asyncio.sleep(0.02)

    # -- calls ------------------------------------------------------------------------

    def new_call(
        self, kind: int, payload: bytes, label: str, args: tuple[Any, ...] = (), priority: int = 5,
        project: str | None = None, soft_timeout: float | None = None,
        resources: Mapping[str, float] | None = None,
    ) -> Call:
        return Call(next(self._ids), kind, payload, ReplyFuture(), label, args, priority, project,
                    soft_timeout or 0.0, resources)

    def submit(self, call: Call) -> None:
        """Place ``call`` now, or queue it until a worker frees up or starts."""
        if self.stopping:
            raise PoolClosedError("the execution manager is shutting down and takes no new calls")
        if self.queue or not self.eligible(call.project) or not self._place(call, 1):
            call.queued_at = time.monotonic()
            if self.full:
                self.held.append(call)  # admitted, in order, as room frees
            else:
                self.queue.push(call)

    @property
    def waiting(self) -> int:
        """Calls waiting for a worker: queued, or held back by maxQueue."""
        return len(self.queue) + len(self.held)

    @property
    def full(self) -> bool:
        """Whether ``maxQueue`` calls wait already (or are held waiting for room)."""
        most = self.settings.max_queue
        return most is not None and (len(self.queue) >= most or bool(self.held))

    async def room(self) -> None:
        """Return once the queue has room for another call (at once if it has)."""
        while self.full and not self.stopping:
            waiter = asyncio.get_running_loop().create_future()
            self._room.append(waiter)
            await waiter

    def _admit(self) -> None:
        """Room freed: admit held calls, then wake room() waiters."""
        most = self.settings.max_queue
        if most is None:
            return
        while self.held and len(self.queue) < most:
            call = self.held.popleft()
            if not call.future.done():
                self.queue.push(call)
        while self._room and not self.full:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def eligible(self, project: str | None) -> bool:
        """Whether a call of ``project`` may start now (its limit not reached)."""
        if project is None:
            return True
        limit = self.project_limits.get(project)
        return limit is None or self.project_running.get(project, 0) < limit

    def set_project_limit(self, project: str, limit: int | None) -> None:
        if limit is None:
            self.project_limits.pop(project, None)
        else:
            self.project_limits[project] = limit
        if self.queue:
            self._drain()

    def send_to(self, worker_id: str, call: Call) -> None:
        """Send ``call`` to one worker, bypassing placement (pinned instances)."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.executor.is_closed:
            raise PoolClosedError(f"worker {worker_id} is gone")
        self._dispatch(worker, call)

    def check_resources(self, request: Mapping[str, float], label: str) -> None:
        """Refuse at once a request no worker could ever satisfy."""
        offers = [s.resources for s in self._members]
        if unsatisfiable(offers, self.new_offer, request):
            offered = self.new_offer if not offers else offers[0]
            raise UnsatisfiableError(
                f"{label} asks for {dict(request)}, which no {self.settings.node_type} worker can "
                f"ever offer (they offer {dict(offered or {})}; add labels through executorOptions)"
            )

    def _place_resources(self, call: Call, request: Mapping[str, float], waiting: int) -> bool:
        room = self._live() < self.limits.max_workers and self.starting < waiting
        decision, scores = place_with(
            self._members, {s.id: s.resources for s in self._members}, request,
            can_start=room, new_offer=self.new_offer,
        )
        if decision.action == "worker":
            self.placements.append({"call": call.describe(), "worker": decision.worker_id, "scores": scores})
            self._dispatch(self.workers[decision.worker_id], call)  # type: ignore[index]
            return True
        if decision.action == "start":
            self._spawn()
        return False

    def _place(self, call: Call, waiting: int) -> bool:
        if call.resources:
            return self._place_resources(call, call.resources, waiting)
        local = self.local
        decision = place(
            self._members, self.limits, cpu_percent=self.cpu_percent,
            local_free=local is not None and local.running < local.limit,
            total=self._live() - self.starting, starting=self.starting, queued=waiting - 1,
        )
        action = decision.action
        if action == "worker":
            self._dispatch(self.workers[decision.worker_id], call)  # type: ignore[index]
            return True
        if action == "local" and local is not None:
            self._dispatch(local, call)
            return True
        if action == "start":
            self._spawn()
            self.last_scale_up = time.monotonic()
            self.last_scaling = "all workers busy: started one"
            self.events.emit("scaled-up", count=1, reason=self.last_scaling)
        return False

    def _dispatch(self, worker: PoolWorker, call: Call) -> None:
        call.started = time.perf_counter()
        if self.timings is not None:
            self.timings.wait.observe(time.monotonic() - call.queued_at if call.queued_at else 0.0)
        call.worker_id = worker.id
        worker.executor.submit(call)
        worker.idle_since = None
        if call.project is not None:
            self.project_running[call.project] = self.project_running.get(call.project, 0) + 1

    def _finished(self, worker: PoolWorker, call: Call, ok: bool | None) -> None:
        """An executor ended ``call`` (called synchronously, before its future is set);
        ``ok`` is None for a call dropped before it ran."""
        if call.project is not None:
            self.project_running[call.project] -= 1
        if ok is None:
            if not worker.executor.inflight:
                worker.idle_since = time.monotonic()
            if self.queue:
                self._drain()
            return
        now = time.perf_counter()
        # Service time: as the executor measured it, or from when the worker could start
        # it (not from dispatch).
        took = call.ran if call.ran is not None else now - max(call.started, worker.last_done)
        worker.last_done = now
        worker.mean = took if worker.mean is None else worker.mean * 0.8 + took * 0.2
        if self.timings is not None:
            self.timings.duration.observe(took)
        if worker is not self.local:
            worker.limit = self._cap(worker, inflight_limit(worker.mean, worker.executor.overhead, worker.width))
        if ok:
            self.done += 1
        else:
            self.failed += 1
        limit = self.settings.max_tasks_per_worker
        if limit is not None and worker is not self.local and worker.executor.done + worker.executor.failed >= limit:
            self.recycle(worker, f"ran {limit} calls (maxTasksPerWorker)")
        events = self.events
        if events.wants("task-complete" if ok else "task-error"):
            events.emit("task-complete" if ok else "task-error", worker_id=worker.id, call_id=call.id,
                        call=call.label, seconds=took)
        if not worker.executor.inflight:
            worker.idle_since = time.monotonic()
        if self.queue:
            self._drain(worker if worker is not self.local else None)

    def withdraw(self, call: Call) -> bool:
        """Take ``call`` out of the queue (or the held calls); False if it is not there."""
        if self.queue.discard(call):
            self._admit()
            return True
        if call in self.held:
            self.held.remove(call)
            return True
        return False

    def _unqueue_or_find(self, call: Call) -> PoolWorker | None:
        """Drop ``call`` from the queue (None), or the worker whose executor holds it."""
        if self.withdraw(call):
            return None
        members = [*self._members, self.local] if self.local else self._members
        return next((s for s in members if call.id in s.executor.inflight), None)

    def _cap(self, worker: PoolWorker, limit: int) -> int:
        """``limit``, but never more calls than the worker may still run (maxTasksPerWorker)."""
        most = self.settings.max_tasks_per_worker
        if most is None:
            return limit
        return max(0, min(limit, most - worker.executor.done - worker.executor.failed))

    def abort(self, call: Call, reason: str = "") -> str | None:
        """Stop ``call`` by force. Returns the id of the worker that was running it,
        or None if it was still queued (it never runs)."""
        worker = self._unqueue_or_find(call)
        if worker is None:
            return None
        worker.executor.abort(call.id, reason)
        return worker.id

    def _drain(self, freed: PoolWorker | None = None) -> None:
        """Place waiting calls in queue order: first on the worker that just freed
        up, then wherever placement says."""
        queue = self.queue
        now = time.monotonic()
        while queue and not self.closed:
            call = queue.peek(now, self.eligible)
            if call is None:
                break  # every waiting call's project is at its limit
            if call.future.done():
                queue.discard(call)
                continue
            if (freed is not None and freed.available and freed.running < freed.limit
                    and (not call.resources or fits(freed.resources, call.resources))):
                queue.discard(call)
                self._dispatch(freed, call)
                continue
            if not self._place(call, len(queue)):
                break
            queue.discard(call)
        if self.held or self._room:
            self._admit()
