"""Workers of the pool (:class:`PoolWorker`) and their lifecycle (start, replace, recycle,
retire, autoscale). :class:`WorkerLifecycle` is the base of :class:`~.pool.WorkerPool`;
each change is reported to the pool's scheduler (up, unhealthy, draining, gone).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from .background import Background
from .events import EventBus
from .executor import CallHost, Executor, ExecutorFactory, WorkerState
from .policy import Limits, ScalePlan, pin_target, plan_scaling
from .scheduler import Scheduler
from .settings import Settings
from .stimuli import Stimulus, WorkerDraining, WorkerGone, WorkerUnhealthy, WorkerUp

log = structlog.get_logger("execution-manager")
_CLOSED = (WorkerState.FAILED, WorkerState.TERMINATED)


class PoolWorker:
    """The pool's view of one executor (satisfies :class:`.policy.WorkerView`)."""

    __slots__ = ("executor", "external", "id", "idle_since", "pins", "resources", "retiring", "rss", "width")
    id: str

    def __init__(self, executor: Executor, *, external: bool = False) -> None:
        self.executor = executor
        self.id = executor.id
        self.external = external  # brought by a node, not started by the pool: never scaled
        self.width = max(1, executor.info().width)
        self.rss = 0
        self.idle_since: float | None = time.monotonic()
        self.pins: set[str] = set()
        self.retiring = False
        self.resources = executor.info().resources

    @property
    def available(self) -> bool:
        return self.executor.is_available and not self.retiring

    @property
    def running(self) -> int:
        return len(self.executor.inflight)

    @property
    def pinned(self) -> int:
        return len(self.pins)

    def __repr__(self) -> str:
        return f"<PoolWorker {self.executor!r} pins={len(self.pins)}>"



class WorkerLifecycle:
    """Starting, replacing, recycling and retiring the pool's workers."""

    # Shared with WorkerPool, which sets them up.
    settings: Settings
    limits: Limits
    options: Mapping[str, Any]
    events: EventBus
    sched: Scheduler
    loop: asyncio.AbstractEventLoop
    _gone_pending: dict[str, str]  # worker id -> why: ended, not yet reported gone
    workers: dict[str, PoolWorker]
    _members: list[PoolWorker]
    _factory: ExecutorFactory
    _seq: itertools.count[int]
    background: Background
    starting: int
    closed: bool
    memory_percent: float
    last_scaling: str
    last_scale_up: float | None
    on_worker_lost: Callable[[PoolWorker], None] | None
    on_retire: Callable[[PoolWorker], Awaitable[None]] | None
    host: CallHost | None

    def feed(self, stimulus: Stimulus) -> None:
        raise NotImplementedError

    def _spawn(self) -> None:
        self.starting += 1
        self.background.spawn(self._start_worker(counted=True))

    async def _start_worker(self, counted: bool = False) -> PoolWorker | None:
        if not counted:
            self.starting += 1
        wid = f"{self.settings.node_type}-{next(self._seq)}"
        try:
            executor = self._factory(wid, self.options)
            executor.listeners.append(self._on_state)
            await executor.start()
        except Exception as exc:
            self.starting -= 1
            log.error("worker failed to start", worker_id=wid, error=str(exc))
            self.events.emit("worker-error", worker_id=wid, reason=f"start failed: {exc}")
            if not self._members and not self.starting and self.sched.queue:
                self._no_workers(f"no worker could be started: {exc}")
            return None
        self.starting -= 1
        if self.closed:
            await executor.stop(drain=False)
            return None
        return self._enroll(executor, external=False)

    def _enroll(self, executor: Executor, *, external: bool) -> PoolWorker:
        """Make a started executor one of the pool's workers and place waiting calls."""
        self._gone(executor.id)  # a slot id that comes back: the old one's record goes first
        worker = PoolWorker(executor, external=external)
        executor.host = self.host
        self.workers[executor.id] = worker
        self._members.append(worker)
        info = executor.info()
        where = {"node": info.node} if external else {}
        if external:
            log.info("worker joined", worker_id=executor.id, address=info.address, **where)
        else:
            log.debug("worker started", worker_id=executor.id, pid=info.pid)
        self.events.emit("worker-started", worker_id=executor.id, node_type=executor.node_type, pid=info.pid,
                         **where)
        self.feed(WorkerUp(self.loop.time(), executor.id, worker.width, info.resources, overhead=executor.overhead,
                           calls=None if external else self.settings.max_tasks_per_worker))
        return worker

    def adopt(self, executor: Executor) -> None:
        """Take in a started executor the pool did not start (a remote node's slot).
        It is placed on like any worker, but never counted against min/maxWorkers nor
        retired by the autoscaler; it leaves when its node does."""
        if self.closed:
            raise RuntimeError("the pool is stopped")
        executor.listeners.append(self._on_state)
        self._enroll(executor, external=True)

    def _on_state(self, executor: Executor, old: WorkerState, new: WorkerState) -> None:
        now = self.loop.time()
        if new == WorkerState.UNHEALTHY or (old == WorkerState.UNHEALTHY and executor.is_available):
            self.feed(WorkerUnhealthy(now, executor.id, healthy=new != WorkerState.UNHEALTHY))
            return
        if new not in _CLOSED:
            return
        worker = self.workers.pop(executor.id, None)
        if worker is None:
            return
        self._members.remove(worker)
        reason = executor.info().exit_reason or new.value
        # Nothing more is sent to it now; it is gone once the executor has failed what it
        # held (in this same turn), so each call's error is the executor's own.
        self.feed(WorkerUnhealthy(now, executor.id))
        self._gone_pending[executor.id] = reason
        self.loop.call_soon(self._gone, executor.id)
        expected = new == WorkerState.TERMINATED
        self.events.emit("worker-terminated", worker_id=executor.id, reason=reason, expected=expected)
        if new == WorkerState.FAILED:
            log.warning("worker died", worker_id=executor.id, reason=reason, task_ids=list(executor.inflight))
            self.events.emit("worker-error", worker_id=executor.id, reason=reason)
            if self.on_worker_lost is not None:
                self.on_worker_lost(worker)
        if not self.closed and self._wants_worker():
            self._spawn()

    def _gone(self, worker_id: str) -> None:
        """Tell the scheduler a worker is gone (once; an id may come back, on a new executor)."""
        reason = self._gone_pending.pop(worker_id, None)
        if reason is not None:
            self.feed(WorkerGone(self.loop.time(), worker_id, reason))

    def _no_workers(self, why: str) -> None:
        raise NotImplementedError

    async def wait_for_worker(self, exclude: str | None = None, *, start: bool = True) -> PoolWorker | None:
        """A worker to pin an instance on; with ``start``, one is started if there is
        none and room (waiting up to ``startTimeout``)."""
        deadline = time.monotonic() + self.settings.start_timeout
        while not self.closed:
            wid = pin_target(self._members, exclude)
            if wid is not None:
                return self.workers[wid]
            if not start:
                return None
            others = sum(1 for s in self._members if s.id != exclude)
            if others + self.starting < self.settings.max_workers and not self.starting:
                worker = await self._start_worker()
                if worker is not None:
                    return worker
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        return None

    def recycle(self, worker: PoolWorker, reason: str) -> None:
        """Replace ``worker`` between calls: it takes no new call, finishes what it holds
        and leaves; a replacement starts at once when one is needed."""
        if worker.retiring or worker.executor.is_closed:
            return
        worker.retiring = True
        log.info("recycling worker", worker_id=worker.id, reason=reason)
        self.events.emit("worker-recycled", worker_id=worker.id, reason=reason)
        self.feed(WorkerDraining(self.loop.time(), worker.id))
        if not self.closed and self._wants_worker():
            self._spawn()
        self.background.spawn(self._leave(worker, reason))

    def _wants_worker(self) -> bool:
        """Whether a worker should start now: below minWorkers, or calls wait and there
        is room below maxWorkers."""
        live = self._live()
        return live < self.settings.min_workers or (bool(self.sched.queue) and live < self.limits.max_workers)

    def _live(self) -> int:
        """Workers the pool started that stay (not leaving), plus those starting."""
        return sum(1 for s in self._members if not s.retiring and not s.external) + self.starting

    async def _leave(self, worker: PoolWorker, reason: str, drain: bool = True) -> None:
        if self.on_retire is not None and worker.pins:
            await self.on_retire(worker)
        self.feed(WorkerDraining(self.loop.time(), worker.id))  # no new call; what it runs finishes
        await worker.executor.stop(drain=drain, timeout=self.settings.drain_timeout)
        self.events.emit("worker-retired", worker_id=worker.id, reason=reason)

    async def retire(self, worker_id: str, reason: str = "retired", *, drain: bool = True) -> None:
        """Move the worker's pinned instances away, then drain and stop it (without
        ``drain``: stop it now; what it runs fails with WorkerCrashedError, or is retried).

        :raises LookupError: no such worker (the message lists the workers).
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            known = ", ".join(self.workers) or "none"
            raise LookupError(f"no worker {worker_id!r} (workers: {known})")
        if worker.retiring:
            return
        worker.retiring = True
        log.info("retiring worker", worker_id=worker_id, reason=reason, drain=drain)
        await self._leave(worker, reason, drain)

    def set_bounds(self, min_workers: int | None = None, max_workers: int | None = None) -> str:
        """Change minWorkers / maxWorkers while running (None: keep). Starts workers up
        to the new minimum now and retires those above the new maximum (idle first,
        draining). Returns the decision, also shown as the autoscaler's last one.

        :raises ValueError: naming the bound at fault.
        """
        lo = self.settings.min_workers if min_workers is None else min_workers
        hi = self.settings.max_workers if max_workers is None else max_workers
        for name, value in (("minWorkers", lo), ("maxWorkers", hi)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, not {value!r}")
        if lo > hi:
            raise ValueError(f"minWorkers ({lo}) is above maxWorkers ({hi})")
        if hi == 0 and self.settings.nodes is None:
            raise ValueError("maxWorkers 0 leaves no worker at all: nodes are not enabled (custom.nodes)")
        self.settings = self.settings.model_copy(update={"min_workers": lo, "max_workers": hi})
        self.limits = self.limits._replace(min_workers=lo, max_workers=hi)
        reason = self.last_scaling = f"bounds set to {lo}..{hi} on request"
        log.info("scaling bounds changed", min_workers=lo, max_workers=hi)
        while self._live() < lo:
            self._spawn()
        staying = sorted((s for s in self._members if not s.retiring and not s.external), key=lambda s: s.running)
        for worker in staying[: max(0, self._live() - hi)]:
            worker.retiring = True
            self.background.spawn(self._leave(worker, reason))
        return reason

    def autoscale(self, now: float) -> ScalePlan:
        plan = plan_scaling(
            self._members, self.limits, starting=self.starting, queued=len(self.sched.queue),
            memory_percent=self.memory_percent, now=now, last_scale_up=self.last_scale_up,
        )
        if plan.start or plan.retire:
            self.last_scaling = plan.reason
            log.info("scaling", start=plan.start, retire=list(plan.retire), reason=plan.reason)
        for _ in range(plan.start):
            self._spawn()
        if plan.start:
            self.last_scale_up = now
            self.events.emit("scaled-up", count=plan.start, reason=plan.reason)
        for wid in plan.retire:
            self.background.spawn(self.retire(wid, plan.reason))
            self.events.emit("scaled-down", worker_id=wid, reason=plan.reason)
        return plan

    @property
    def members(self) -> list[PoolWorker]:
        return list(self._members)
