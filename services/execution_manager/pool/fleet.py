"""The pool's workers (:class:`PoolWorker`) and the :class:`Fleet` that keeps them: it
starts, replaces, recycles and retires them, and reports each change to the scheduler
(up, unhealthy, draining, gone). How many run is :mod:`.scaling`'s to carry out; the
calls are the pool's (:mod:`.pool`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import structlog

from ..errors import UnsatisfiableError, WorkerConflictError
from ..events import EventBus
from ..executors import CLOSED, Background, CallHost, Worker, WorkerFactory, WorkerState
from ..scheduling import Scheduler, StopWorker, pin_plan, unsatisfiable, wants_worker
from ..scheduling.stimuli import Load, Stimulus, WorkerDraining, WorkerGone, WorkerUnhealthy, WorkerUp
from ..settings import Settings

log = structlog.get_logger("execution-manager")


class PoolWorker:
    """The pool's record of one worker; ``backend`` is the plugin's :class:`Worker`
    (satisfies :class:`..scheduling.policy.WorkerView`)."""

    __slots__ = ("backend", "external", "id", "idle_since", "pins", "resources", "retiring", "width")
    id: str

    def __init__(self, backend: Worker, now: float, *, external: bool = False) -> None:
        self.backend = backend
        self.id = backend.id
        self.external = external  # brought by a node, not started by the pool: never scaled
        info = backend.info()
        self.width = max(1, info.width)
        self.idle_since: float | None = now  # the pool's clock (its event loop's)
        self.pins: set[str] = set()
        self.retiring = False
        self.resources = info.resources

    @property
    def available(self) -> bool:
        return self.backend.is_available and not self.retiring

    @property
    def running(self) -> int:
        return len(self.backend.inflight)

    @property
    def pinned(self) -> int:
        return len(self.pins)

    def __repr__(self) -> str:
        leaving = " retiring" if self.retiring else ""
        return f"<PoolWorker {self.backend!r} pins={len(self.pins)}{leaving}>"


class PinKeeper(Protocol):
    """Who holds instances pinned on workers (the execution manager's pin table)."""

    async def move_off(self, worker: PoolWorker) -> None:
        """``worker`` retires: move what it holds elsewhere first."""

    def lost(self, worker: PoolWorker) -> None:
        """``worker`` died: what it held is gone."""


class Fleet:
    """The workers of one node type, plus (opted in) an in-process worker for idle times."""

    def __init__(
        self,
        settings: Settings,
        factory: WorkerFactory,
        events: EventBus,
        sched: Scheduler,
        feed: Callable[[Stimulus], None],
        *,
        no_workers: Callable[[str], None],
        host: CallHost | None = None,
        in_process_factory: WorkerFactory | None = None,
    ) -> None:
        self.settings = settings
        self.limits = settings.limits(in_process=in_process_factory is not None)
        self.events = events
        self._sched = sched  # read only: what waits, to start a worker for it
        self._feed = feed
        self._no_workers = no_workers  # none could start and none is left: fail what waits
        self.host = host  # where running calls' progress, logs and requests go
        self._factory = factory
        self._in_process_factory = in_process_factory
        self.options: Mapping[str, Any] = {"startTimeout": settings.start_timeout, **settings.executor_options}
        self.new_offer: Mapping[str, float] | None = factory.offers(self.options)
        self.workers: dict[str, PoolWorker] = {}
        self._members: list[PoolWorker] = []
        self.in_process: PoolWorker | None = None
        # Every worker by id, the in-process one included: find() is a dict lookup, made
        # twice for every call.
        self._by_id: dict[str, PoolWorker] = {}
        self.find: Callable[[str], PoolWorker | None] = self._by_id.get
        """The worker of this id (the in-process one included), if it is still here."""
        self.starting = 0
        self.restarts: dict[str, int] = {}  # worker id -> times restarted on request
        self.closed = False  # no worker starts any more
        self._pins: PinKeeper | None = None
        self._seq = itertools.count(1)
        self._gone_pending: dict[str, str] = {}  # worker id -> why: ended, not yet reported gone
        self.loop = asyncio.get_running_loop()
        self.background = Background("pool")  # starts, retirements, drains asked for over HTTP

    def __repr__(self) -> str:
        busy = sum(1 for s in self._members if s.running)
        return (f"<Fleet {self.settings.node_type} workers={len(self._members)} busy={busy} "
                f"starting={self.starting} bounds={self.limits.min_workers}..{self.limits.max_workers}>")

    def keep_pins(self, keeper: PinKeeper) -> None:
        """Tell ``keeper`` when a worker holding pinned instances retires or dies."""
        self._pins = keeper

    @property
    def members(self) -> list[PoolWorker]:
        return list(self._members)

    # -- start and stop ---------------------------------------------------------------

    async def start(self) -> bool:
        """Start the in-process worker (opted in) and minWorkers workers; False when a
        minimum was asked for and none could start."""
        if self._in_process_factory is not None and self.limits.in_process:
            backend = self._in_process_factory("inprocess-0", {"threads": self.settings.in_process_threads})
            backend.host = self.host
            await backend.start()
            self.in_process = self._by_id[backend.id] = PoolWorker(backend, self.loop.time())
            self._feed(WorkerUp(self.loop.time(), backend.id, self.settings.in_process_threads, in_process=True))
            self._feed(Load(self.loop.time(), low=True))  # until the monitor's first sample says otherwise
        results = await asyncio.gather(*(self._start_worker() for _ in range(self.settings.min_workers)))
        return not self.settings.min_workers or any(results)

    async def stop(self, hurried: asyncio.Future[Any] | None) -> None:
        """Stop every worker, letting each finish what it runs for ``drainTimeout``
        seconds; once ``hurried`` is done, what runs is stopped at once."""
        self.closed = True
        members = list(self._members) + ([self.in_process] if self.in_process else [])
        stopping: asyncio.Future[Any] = asyncio.gather(
            *(worker.backend.stop(drain=True, timeout=self.settings.drain_timeout) for worker in members),
            return_exceptions=True,
        )
        if hurried is not None:
            await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
            if hurried.done() and not stopping.done():
                for worker in members:  # stopping the running call ends its worker at once
                    self.kill(worker, "the kernel was asked to stop at once")
        await stopping

    def spawn(self) -> None:
        """Start a worker in the background (counted as starting at once)."""
        self.starting += 1
        self.background.spawn(self._start_worker(counted=True))

    async def _start_worker(self, counted: bool = False, worker_id: str | None = None) -> PoolWorker | None:
        if not counted:
            self.starting += 1
        wid = worker_id or f"{self.settings.node_type}-{next(self._seq)}"
        try:
            backend = self._factory(wid, self.options)
            backend.listeners.append(self._on_state)
            await backend.start()
        except Exception as exc:
            self.starting -= 1
            log.error("worker failed to start", worker_id=wid, error=str(exc))
            self.events.emit("worker-error", worker_id=wid, reason=f"start failed: {exc}")
            if not self._members and not self.starting and self._sched.queue:
                self._no_workers(f"no worker could be started: {exc}")
            return None
        self.starting -= 1
        if self.closed:
            await backend.stop(drain=False)
            return None
        return self._enroll(backend, external=False)

    def _enroll(self, backend: Worker, *, external: bool) -> PoolWorker:
        """Make a started backend one of the pool's workers and place waiting calls."""
        self._gone(backend.id)  # a slot id that comes back: the old one's record goes first
        worker = PoolWorker(backend, self.loop.time(), external=external)
        backend.host = self.host
        self.workers[backend.id] = self._by_id[backend.id] = worker
        self._members.append(worker)
        info = backend.info()
        where = {"node": info.node} if external else {}
        if external:
            log.info("worker joined", worker_id=backend.id, address=info.address, **where)
        else:
            log.debug("worker started", worker_id=backend.id, pid=info.pid)
        self.events.emit("worker-started", worker_id=backend.id, node_type=backend.node_type, pid=info.pid,
                         **where)
        self._feed(WorkerUp(self.loop.time(), backend.id, worker.width, info.resources, overhead=backend.overhead,
                           calls=None if external else self.settings.max_tasks_per_worker))
        return worker

    def adopt(self, backend: Worker) -> None:
        """Take in a started backend the pool did not start (a remote node's slot).
        It is placed on like any worker, but never counted against min/maxWorkers nor
        retired by the autoscaler; it leaves when its node does."""
        if self.closed:
            raise RuntimeError("the pool is stopped")
        backend.listeners.append(self._on_state)
        self._enroll(backend, external=True)

    def _on_state(self, backend: Worker, old: WorkerState, new: WorkerState) -> None:
        worker = self.workers.get(backend.id)
        if worker is not None and worker.backend is not backend:
            return  # a restarted worker's predecessor: its id is its successor's now
        now = self.loop.time()
        if new == WorkerState.UNHEALTHY or (old == WorkerState.UNHEALTHY and backend.is_available):
            self._feed(WorkerUnhealthy(now, backend.id, healthy=new != WorkerState.UNHEALTHY))
            return
        if new not in CLOSED:
            return
        if worker is None:
            return
        del self.workers[backend.id], self._by_id[backend.id]
        self._members.remove(worker)
        reason = backend.info().exit_reason or new.value
        # Nothing more is sent to it now; it is gone once the backend has failed what it
        # held (in this same turn), so each call's error is the backend's own.
        self._feed(WorkerUnhealthy(now, backend.id))
        self._gone_pending[backend.id] = reason
        self.loop.call_soon(self._gone, backend.id)
        expected = new == WorkerState.TERMINATED
        self.events.emit("worker-terminated", worker_id=backend.id, reason=reason, expected=expected)
        if new == WorkerState.FAILED:
            log.warning("worker died", worker_id=backend.id, reason=reason, task_ids=list(backend.inflight))
            self.events.emit("worker-error", worker_id=backend.id, reason=reason)
            if self._pins is not None:
                self._pins.lost(worker)
        if not self.closed and self._wants_worker():
            self.spawn()

    def _gone(self, worker_id: str) -> None:
        """Tell the scheduler a worker is gone (once; an id may come back, on a new backend)."""
        reason = self._gone_pending.pop(worker_id, None)
        if reason is not None:
            self._feed(WorkerGone(self.loop.time(), worker_id, reason))

    async def wait_for_worker(self, exclude: str | None = None, *, start: bool = True) -> PoolWorker | None:
        """A worker to pin an instance on; with ``start``, one is started if there is
        none and room (waiting up to ``startTimeout``)."""
        deadline = self.loop.time() + self.settings.start_timeout
        while not self.closed:
            where = pin_plan(self._members, self.limits, exclude=exclude, starting=self.starting)
            if isinstance(where, str):
                return self.workers[where]
            if not start:
                return None
            if where is not None:
                worker = await self._start_worker()
                if worker is not None:
                    return worker
            if self.loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        return None

    def recycle(self, worker: PoolWorker, reason: str) -> None:
        """Replace ``worker`` between calls: it takes no new call, finishes what it holds
        and leaves; a replacement starts at once when one is needed."""
        if worker.retiring or worker.backend.is_closed:
            return
        worker.retiring = True
        log.info("recycling worker", worker_id=worker.id, reason=reason)
        self.events.emit("worker-recycled", worker_id=worker.id, reason=reason)
        self._feed(WorkerDraining(self.loop.time(), worker.id))
        if not self.closed and self._wants_worker():
            self.spawn()
        self.background.spawn(self._leave(worker, reason))

    def _wants_worker(self) -> bool:
        return wants_worker(self.limits, live=self.live(), queued=len(self._sched.queue))

    def live(self) -> int:
        """Workers the pool started that stay (not leaving), plus those starting."""
        return sum(1 for s in self._members if not s.retiring and not s.external) + self.starting

    async def _leave(self, worker: PoolWorker, reason: str, drain: bool = True) -> None:
        if self._pins is not None and worker.pins:
            await self._pins.move_off(worker)
        self._feed(WorkerDraining(self.loop.time(), worker.id))  # no new call; what it runs finishes
        await worker.backend.stop(drain=drain, timeout=self.settings.drain_timeout)
        self.events.emit("worker-retired", worker_id=worker.id, reason=reason)

    async def retire(self, worker_id: str, reason: str = "retired", *, drain: bool = True) -> None:
        """Move the worker's pinned instances away, then drain and stop it (without
        ``drain``: stop it now; what it runs fails with WorkerCrashedError, or is retried).

        :raises LookupError: no such worker (the message lists the workers).
        """
        worker = self.get(worker_id)
        if self._leaving(worker, reason, drain):
            await self._leave(worker, reason, drain)

    def get(self, worker_id: str) -> PoolWorker:
        """The pool's worker of this id (not the in-process one).

        :raises LookupError: no such worker (the message lists the workers).
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            raise LookupError(f"no worker {worker_id!r} (workers: {', '.join(sorted(self.workers)) or 'none'})")
        return worker

    def leave_soon(self, worker_id: str, reason: str, *, drain: bool = True) -> bool:
        """Start retiring ``worker_id`` (see :meth:`retire`) without waiting; False if it
        is gone or leaving already."""
        worker = self.workers.get(worker_id)
        if worker is None or not self._leaving(worker, reason, drain):
            return False
        self.background.spawn(self._leave(worker, reason, drain))
        return True

    def begin_restart(self, worker_id: str, reason: str = "restarted on request") -> Coroutine[Any, Any, None]:
        """Check and mark a restart now; the coroutine returned carries it out: drain
        ``worker_id`` (its pinned instances move first), then start a new worker under its
        id, counted in :attr:`restarts`; a node's slot is drained and its node starts
        another in its place. A second restart meanwhile is refused, not raced.

        :raises LookupError: no such worker (the message lists the workers).
        :raises WorkerConflictError: it is leaving already, or its kind cannot restart.
        """
        worker = self.get(worker_id)
        if worker.retiring:
            raise WorkerConflictError(f"worker {worker_id} is leaving already (drained or stopped): not restarted")
        if worker.external and not worker.backend.replaced_when_stopped:
            raise WorkerConflictError(
                f"worker {worker_id} cannot be restarted: it is a {worker.backend.node_type} worker, which the "
                f"{worker.backend.node_type} side starts and stops; drain or stop it instead")
        self.restarts[worker_id] = self.restarts.get(worker_id, 0) + 1
        self.events.emit("worker-restarted", worker_id=worker_id, reason=reason)
        self._leaving(worker, reason, True)
        if not worker.external:
            self.starting += 1  # its successor: nothing else starts in its place meanwhile
        return self._restart(worker, reason)

    async def _restart(self, worker: PoolWorker, reason: str) -> None:
        if worker.external:  # its node starts another in its place
            await self._leave(worker, reason)
            return
        try:
            await self._leave(worker, reason)  # ends once its backend has (its record is gone)
        except BaseException:
            self.starting -= 1
            raise
        if await self._start_worker(counted=True, worker_id=worker.id) is None:
            raise WorkerConflictError(f"worker {worker.id} stopped, but its successor could not start (see the log)")

    def _leaving(self, worker: PoolWorker, reason: str, drain: bool) -> bool:
        """Mark ``worker`` as leaving now (it counts no more); False if it was already."""
        if worker.retiring:
            return False
        worker.retiring = True
        log.info("retiring worker", worker_id=worker.id, reason=reason, drain=drain)
        return True

    def stop_worker(self, stop: StopWorker) -> None:
        """Stop a worker as told: draining, it is replaced between calls (when one is
        needed); not, what it runs is stopped now. One already leaving (as the scheduler's
        "drained" one is: it ran its last call) is stopped by its own drain."""
        worker = self.find(stop.worker_id)
        if worker is None or worker is self.in_process:
            return
        if stop.drain:
            self.recycle(worker, stop.reason)
        else:
            self.kill(worker, stop.reason)

    def kill(self, worker: PoolWorker, reason: str) -> None:
        """Stop what ``worker`` runs by force (it is ended and replaced); its calls fail
        or retry under their policy, each with ``reason``."""
        for task_id in list(worker.backend.inflight):
            worker.backend.abort(task_id, reason)

    def check_resources(self, request: Mapping[str, float], label: str) -> None:
        """Refuse at once a request no worker could ever satisfy."""
        offers = [s.resources for s in self._members]
        if unsatisfiable(offers, self.new_offer, request):
            offered = self.new_offer if not offers else offers[0]
            raise UnsatisfiableError(
                f"{label} asks for {dict(request)}, which no {self.settings.node_type} worker can "
                f"ever offer (they offer {dict(offered or {})}; add labels through executorOptions)"
            )
