"""The pool of executors: it carries out what the scheduler decides.

:class:`WorkerPool` reports what happens (a call submitted or cancelled, an attempt's
answer, a worker up, unhealthy or gone, the clock) to its :class:`.scheduler.Scheduler`
and carries out the instructions it gets back: send an attempt to an executor, stop one
by force, settle a caller's future, wake up for a retry or a time limit. It decides
nothing about a call itself. :mod:`.workers` looks after the workers. The hot path
(:meth:`WorkerPool.submit` -> executor -> reply) creates no task per call.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from kernel.errors import ExecutionError

from .background import Background
from .errors import CallTimeoutError, PoolClosedError, UnsatisfiableError, WorkerCrashedError, WorkerStartError
from .events import EventBus
from .executor import Attempt, CallHost, ExecutorFactory, ReplyFuture
from .handles import CallFuture, FailedAttempt, rebuild
from .history import Timings
from .policy import Limits
from .queue import CallQueue
from .resources import fits, tightness, unsatisfiable
from .scheduler import Scheduler
from .serialization import format_exception, loads, type_name
from .settings import Settings
from .stimuli import (
    Abort,
    Answered,
    Cancelled,
    Closing,
    Instruction,
    Load,
    Lost,
    ProjectLimit,
    Resolve,
    RetryAt,
    Send,
    Stimulus,
    Submitted,
    TakeBack,
    Tick,
    WorkerUnhealthy,
    WorkerUp,
)
from .workers import PoolWorker, WorkerLifecycle

log = structlog.get_logger("execution-manager")


def _jitter(delay: float) -> float:
    return random.uniform(delay / 2, delay)  # equal jitter: never sooner than half the backoff


class WorkerPool(WorkerLifecycle):
    """Executors of one node type, plus (opted in) an in-process worker for idle times."""

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
        self.sched = Scheduler(aging=settings.aging_seconds, project_limits=settings.project_limits,
                               max_deaths=settings.max_call_deaths, jitter=_jitter)
        self.last_scale_up: float | None = None
        self._factory = factory
        self._local_factory = local_factory
        self.events = events
        self.options: Mapping[str, Any] = {"startTimeout": settings.start_timeout, **settings.executor_options}
        self.workers: dict[str, PoolWorker] = {}
        self._members: list[PoolWorker] = []
        self.local: PoolWorker | None = None
        self.tasks: dict[int, CallFuture] = {}  # calls the scheduler owns, by task id
        offers = getattr(factory, "offers", None)
        self.new_offer: Mapping[str, float] | None = offers(self.options) if callable(offers) else None
        self.placements: deque[dict[str, Any]] = deque(maxlen=20)  # the last resource-aware choices
        self.held: deque[CallFuture] = deque()  # calls waiting for room in a full queue (maxQueue)
        self._room: deque[asyncio.Future[None]] = deque()  # room() waiters
        self.starting = 0
        self.stopping = False  # no new calls
        self.closed = False  # no more dispatching either
        self.done = 0  # calls that succeeded
        self.failed = 0  # calls that failed, however many attempts each took
        self.attempts_failed = 0  # attempts that ended in error, retried or not
        self.retried = 0
        self.memory_percent = 0.0
        self.last_scaling = "none yet"
        self.on_worker_lost: Callable[[PoolWorker], None] | None = None
        self.on_retire: Callable[[PoolWorker], Awaitable[None]] | None = None
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._stimuli: deque[Stimulus] = deque()
        self._handling = False
        self._grow_pending = False
        self._gone_pending: dict[str, str] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.loop = asyncio.get_running_loop()
        self.background = Background("pool")  # starts, retirements, drains asked for over HTTP
        self.host: CallHost | None = None  # where running calls' progress, logs and requests go
        self.timings: Timings | None = None  # call durations and queue waits, when someone reads them
        self._on_reply = self._replied  # bound once: it follows every attempt

    def __repr__(self) -> str:
        busy = sum(1 for s in self._members if s.running)
        return f"<WorkerPool workers={len(self._members)} busy={busy} queued={self.sched.queued}>"

    # -- the scheduler's loop -----------------------------------------------------------

    def feed(self, stimulus: Stimulus) -> None:
        """Report ``stimulus`` and carry out what the scheduler says. Reentrant calls
        (an instruction whose effect is a stimulus) queue behind the one in hand."""
        if self._handling:
            self._stimuli.append(stimulus)
        else:
            self._carry(self.sched.handle(stimulus))

    def _carry(self, instructions: list[Instruction]) -> None:
        """Carry out ``instructions``, then those of stimuli they caused meanwhile."""
        self._handling = True
        try:
            send, resolve, pending = self._send, self._resolve, self._stimuli
            while True:
                for instruction in instructions:
                    if type(instruction) is Send:  # the two of every call first: no lookup
                        send(instruction)
                    elif type(instruction) is Resolve:
                        resolve(instruction)
                    else:
                        self._carry_out(instruction)
                if not pending:
                    break
                instructions = self.sched.handle(pending.popleft())
        finally:
            self._handling = False
        self._after()

    def _after(self) -> None:
        """Book-keeping once the scheduler is settled: the wake-up timer, room for held
        calls, a worker started for calls that wait."""
        sched = self.sched
        if sched.wakeup_moved:
            sched.wakeup_moved = False
            self._arm(sched.next_wakeup())
        if self.held or self._room:
            self._admit()
        if sched.queue.count and not self._grow_pending and self.starting < sched.queue.count:
            self._grow_pending = True  # looked at once per turn of the loop, not per call
            self.loop.call_soon(self._grow)

    def _grow(self) -> None:
        """Calls wait for a worker: start one, below maxWorkers."""
        self._grow_pending = False
        queued = len(self.sched.queue)
        if queued and not self.closed and self.starting < queued and self._live() < self.limits.max_workers:
            self._spawn()
            self.last_scale_up = time.monotonic()
            self.last_scaling = "all workers busy: started one"
            self.events.emit("scaled-up", count=1, reason=self.last_scaling)

    def _arm(self, wakeup: float | None) -> None:
        if wakeup is not None and (self._timer_at is None or wakeup < self._timer_at):
            if self._timer is not None:  # a later wake-up than needed is harmless: the timer stays
                self._timer.cancel()
            self._timer_at = wakeup
            self._timer = self.loop.call_at(wakeup, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self.feed(Tick(self.loop.time()))
        self._arm(self.sched.next_wakeup())

    def _carry_out(self, instruction: Instruction) -> None:
        if type(instruction) is RetryAt:
            self._retrying(instruction)
        elif type(instruction) is Abort:
            self._abort(instruction)
        elif type(instruction) is TakeBack:
            worker = self._worker(instruction.worker_id)
            if worker is not None:
                worker.executor.cancel(instruction.task_id)  # else it simply runs there, late
        # StopWorker: a draining worker ran its last call; whoever drains it stops it.

    def _retrying(self, retry: RetryAt) -> None:
        fut = self.tasks[retry.task_id]
        self.retried += 1
        self.events.emit("task-retried", call=fut.label, task_id=fut.task_id, attempt=retry.attempt,
                         worker_id=fut.attempts[-1].worker_id if fut.attempts else None, reason=retry.reason)

    def _abort(self, abort: Abort) -> None:
        worker = self._worker(abort.worker_id)
        if worker is None:
            return
        fut = self.tasks[abort.task_id]  # resolved by the next instruction
        note = f"{fut.describe()} was cancelled"
        if abort.reason == "timeout":
            note = f"{fut.describe()} ran past its timeout of {fut.spec.timeout:g} s"
        worker.executor.abort(abort.task_id, note)

    def _worker(self, worker_id: str) -> PoolWorker | None:
        worker = self.workers.get(worker_id)
        if worker is None and self.local is not None and self.local.id == worker_id:
            return self.local
        return worker

    # -- calls ------------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def submit(self, fut: CallFuture) -> CallFuture:
        """Hand ``fut``'s call to the scheduler (or hold it while ``maxQueue`` calls wait)."""
        if self.stopping:
            raise PoolClosedError("the execution manager is shutting down and takes no new calls")
        self.tasks[fut.task_id] = fut
        if self.full and fut.spec.pinned_to is None:
            self.held.append(fut)  # admitted, in order, as room frees
        elif self._handling:
            self._stimuli.append(Submitted(self.loop.time(), fut.spec))
        else:
            self._carry(self.sched.submitted(self.loop.time(), fut.spec))
        return fut

    def cancel(self, fut: CallFuture) -> None:
        """The caller cancelled ``fut``: a call not started never starts; a running one is
        stopped by force (a pinned instance's call is left to finish: its worker holds
        the instance)."""
        if fut in self.held:
            self.held.remove(fut)
            self.tasks.pop(fut.task_id, None)
        elif fut.spec.pinned_to is None:
            self.feed(Cancelled(self.loop.time(), fut.task_id))

    def _send(self, send: Send) -> None:
        fut = self.tasks[send.task_id]
        spec = fut.spec
        worker_id = send.worker_id
        worker = self._worker(worker_id)
        reply = ReplyFuture()
        call = reply.call = Attempt(spec.task_id, fut.kind, fut.payload, reply, spec.label, fut.args, spec.priority,
                    spec.project, fut.soft_timeout, spec.resources, attempt=send.attempt, timeout=spec.timeout,
                    worker_id=worker_id, on_progress=fut.report_progress, context=fut.context,
                    started=time.perf_counter())
        fut.attempt = call
        if self.timings is not None:
            self.timings.wait.observe(max(0.0, self.loop.time() - fut.queued_at))
        need = spec.resources
        if need:  # what was chosen among which (and how tightly the call fits each)
            self.placements.append({"call": fut.describe(), "worker": worker_id, "fits": {
                w.id: tightness(w.resources, need) for w in self._members if fits(w.resources, need)}})
        if worker is None:
            self.feed(Lost(self.loop.time(), send.task_id, send.attempt, f"worker {worker_id} is gone",
                           started=False))
            return
        try:
            worker.executor.submit(call)
        except PoolClosedError as exc:  # it died and is not reaped yet: the call never reached it
            now = self.loop.time()
            self.feed(WorkerUnhealthy(now, worker_id))  # nothing more goes there
            self.feed(Lost(now, send.task_id, send.attempt, str(exc), started=False))
            return
        worker.idle_since = None
        reply.follow_now(self._on_reply)

    def _replied(self, reply: ReplyFuture) -> None:
        """An attempt ended: tell the scheduler how."""
        call = reply.call
        worker = self._worker(call.worker_id)  # type: ignore[arg-type]  # None: reaped already
        now = self.loop.time()
        fut = self.tasks.get(call.id)
        if worker is not None and not worker.executor.inflight:
            worker.idle_since = time.monotonic()
        if reply.cancelled():  # dropped before it began
            self.feed(Lost(now, call.id, call.attempt, "dropped before it began", started=False))
            return
        exc = reply.exception()
        if exc is None:
            ok, data = reply.result()
            if self._counting and worker is not None:
                self._count(worker, call, ok)
            if fut is None:  # given up already (cancelled, timed out): its room is freed
                self.feed(Answered(now, call.id, call.attempt))
                return
            if ok:
                fut.answer = (call.attempt, data)
                if self._handling:
                    self._stimuli.append(Answered(now, call.id, call.attempt, False, call.ran))
                else:
                    self._carry(self.sched.answered(now, call.id, call.attempt, False, call.ran))
                return
            error = rebuild(data)
            self.attempts_failed += 1
            fut.answer = (call.attempt, error)
            retry = isinstance(error, fut.retry_on) or (isinstance(error, ExecutionError) and error.retryable)
            if retry:
                self._note_attempt(fut, call, error)
            self.feed(Answered(now, call.id, call.attempt, retry, call.ran))
            return
        started = not isinstance(exc, PoolClosedError) and getattr(exc, "started", True)
        if started:
            self.attempts_failed += 1
        if fut is not None:
            fut.answer = (call.attempt, exc)
            if started:
                self._note_attempt(fut, call, exc)
        self.feed(Lost(now, call.id, call.attempt, str(exc), started=bool(started)))

    def _note_attempt(self, fut: CallFuture, call: Attempt, exc: BaseException) -> None:
        fut.attempts.append(FailedAttempt(call.attempt, call.worker_id, f"{type(exc).__name__}: {exc}"))

    @property
    def _counting(self) -> bool:
        """Whether anything is kept per attempt (timings, events, maxTasksPerWorker)."""
        return self.timings is not None or self.settings.max_tasks_per_worker is not None or self.events.active

    def _count(self, worker: PoolWorker, call: Attempt, ok: bool) -> None:
        took = call.ran if call.ran is not None else time.perf_counter() - call.started
        if self.timings is not None:
            self.timings.duration.observe(took)
        events = self.events
        if events.wants("task-complete" if ok else "task-error"):
            events.emit("task-complete" if ok else "task-error", worker_id=worker.id, task_id=call.id,
                        call=call.label, seconds=took)
        limit = self.settings.max_tasks_per_worker
        ex = worker.executor
        if limit is not None and worker is not self.local and ex.done + ex.failed >= limit:
            self.recycle(worker, f"ran {limit} calls (maxTasksPerWorker)")

    def _resolve(self, resolve: Resolve) -> None:
        fut = self.tasks.pop(resolve.task_id, None)
        if fut is None or fut.done():
            return
        outcome = resolve.outcome
        answer = fut.answer if fut.answer is not None and fut.answer[0] == resolve.attempt else None
        fut.answer = None
        if outcome == "answered" and answer is not None and isinstance(answer[1], bytes):
            try:
                value = loads(answer[1])
            except Exception as err:
                self._fail(fut, ExecutionError(
                    f"cannot unpickle the result of {fut.describe()} here: {type(err).__name__}: {err}"))
                return
            self.done += 1
            fut.set_result(value)
            return
        if outcome == "cancelled":
            return
        self._fail(fut, self._error(fut, resolve, answer[1] if answer is not None else None))

    def _error(self, fut: CallFuture, resolve: Resolve, given: BaseException | None) -> BaseException:
        outcome, wid = resolve.outcome, resolve.worker_id
        if outcome == "timeout":
            return CallTimeoutError(f"{fut.describe()} did not finish within {fut.spec.timeout:g} s; "
                                    f"worker {wid} running it was stopped and is replaced")
        if outcome == "expired":
            return CallTimeoutError(f"{fut.describe()} did not start within its deadline of "
                                    f"{fut.spec.deadline:g} s and never will (all workers were busy)")
        if outcome == "closed":
            return PoolClosedError(f"{fut.describe()} was cancelled before it ran: "
                                   "the execution manager is shutting down")
        if resolve.gave_up:
            return WorkerCrashedError(f"{fut.describe()} was given up after killing {self.sched.max_deaths} workers "
                                      f"(maxCallDeaths); last: {given or resolve.reason}", worker_id=wid or "",
                                      call=fut.describe())
        if given is not None:
            return given
        return WorkerCrashedError(f"{fut.describe()} was lost: {resolve.reason}", worker_id=wid or "",
                                  call=fut.describe())

    def _fail(self, fut: CallFuture, exc: BaseException) -> None:
        self.failed += 1
        log.info("call failed", **{**fut.bound(), "task_id": fut.task_id, "call": fut.label,
                                   "attempts": len(fut.attempts) or 1, "error": f"{type_name(exc)}: {exc}"})
        if len(fut.attempts) > 1:
            exc.add_note("attempts:\n" + "\n".join(
                f"  {a.number}. on {a.worker_id or '?'}: {a.outcome}" for a in fut.attempts))
        events = self.events
        if events.wants("task-failed"):
            events.emit("task-failed", call=fut.label, task_id=fut.task_id,
                        worker_id=fut.attempt.worker_id if fut.attempt else None, attempts=len(fut.attempts),
                        error=f"{type_name(exc)}: {exc}",
                        traceback=getattr(exc, "remote_traceback", None) or format_exception(exc))
        fut.set_exception(exc)

    # -- the queue --------------------------------------------------------------------

    @property
    def queue(self) -> CallQueue[Any]:
        """The calls waiting for a worker (the scheduler's)."""
        return self.sched.queue

    @property
    def project_running(self) -> dict[str, int]:
        return self.sched.project_running

    @property
    def project_limits(self) -> dict[str, int]:
        return self.sched.project_limits

    @property
    def waiting(self) -> int:
        """Calls not started: queued, waiting for a retry, or held back by maxQueue."""
        return self.sched.queued + len(self.held)

    @property
    def full(self) -> bool:
        """Whether ``maxQueue`` calls wait already (or are held waiting for room)."""
        most = self.settings.max_queue
        return most is not None and (self.sched.queued >= most or bool(self.held))

    async def room(self) -> None:
        """Return once the queue has room for another call (at once if it has)."""
        while self.full and not self.stopping:
            waiter = self.loop.create_future()
            self._room.append(waiter)
            await waiter

    def _admit(self) -> None:
        """Room freed: admit held calls, then wake room() waiters."""
        most = self.settings.max_queue
        while self.held and (most is None or self.sched.queued < most):
            fut = self.held.popleft()
            if not fut.done():
                self.feed(Submitted(self.loop.time(), fut.spec))
        while self._room and not self.full:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def set_project_limit(self, project: str, limit: int | None) -> None:
        self.feed(ProjectLimit(self.loop.time(), project, limit))

    def check_resources(self, request: Mapping[str, float], label: str) -> None:
        """Refuse at once a request no worker could ever satisfy."""
        offers = [s.resources for s in self._members]
        if unsatisfiable(offers, self.new_offer, request):
            offered = self.new_offer if not offers else offers[0]
            raise UnsatisfiableError(
                f"{label} asks for {dict(request)}, which no {self.settings.node_type} worker can "
                f"ever offer (they offer {dict(offered or {})}; add labels through executorOptions)"
            )

    def set_load(self, cpu_percent: float, memory_percent: float) -> None:
        """The monitor's latest sample: the in-process worker (opted in) is open while
        the machine is idle."""
        self.memory_percent = memory_percent
        if self.local is not None:
            low = cpu_percent < self.limits.local_threshold * 100
            if low != self.sched.local_open:
                self.feed(Load(self.loop.time(), low))

    def _no_workers(self, why: str) -> None:
        """No worker could start and none is left: the calls waiting for one fail."""
        for waiting in list(self.sched.queue):
            fut = self.tasks.get(waiting.spec.task_id)
            self.feed(Cancelled(self.loop.time(), waiting.spec.task_id))
            if fut is not None and not fut.done():
                self._fail(fut, WorkerStartError(f"{fut.describe()} cannot run: {why}"))

    def kill(self, worker: PoolWorker, reason: str) -> None:
        """Stop what ``worker`` runs by force (it is ended and replaced); its calls fail
        or retry under their policy, each with ``reason``."""
        for task_id in list(worker.executor.inflight):
            worker.executor.abort(task_id, reason)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._local_factory is not None and self.limits.run_locally:
            local = self._local_factory("local-0", {"threads": self.settings.local_slots})
            local.host = self.host
            await local.start()
            self.local = PoolWorker(local)
            self.feed(WorkerUp(self.loop.time(), local.id, self.settings.local_slots, local=True))
            self.feed(Load(self.loop.time(), low=True))  # until the monitor's first sample says otherwise
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
            if s.drain_queue and (self.tasks or self.held):
                await self._until_idle(s.drain_timeout, hurried)
            self.closed = True
            for waiter in self._room:
                if not waiter.done():
                    waiter.set_result(None)
            held, self.held = list(self.held), deque()
            for fut in held:
                self.tasks.pop(fut.task_id, None)
                if not fut.done():
                    self._fail(fut, PoolClosedError(f"{fut.describe()} was cancelled before it ran: "
                                                    "the execution manager is shutting down"))
            self.feed(Closing(self.loop.time()))
            members = list(self._members) + ([self.local] if self.local else [])
            stopping: asyncio.Future[Any] = asyncio.gather(
                *(worker.executor.stop(drain=True, timeout=s.drain_timeout) for worker in members),
                return_exceptions=True,
            )
            if hurried is not None:
                await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
                if hurried.done() and not stopping.done():
                    for worker in members:  # stopping the running call ends its worker at once
                        self.kill(worker, "the kernel was asked to stop at once")
            await stopping
        finally:
            if hurried is not None:
                hurried.cancel()
            if self._timer is not None:
                self._timer.cancel()
        await self.background.join()

    async def _until_idle(self, timeout: float, hurried: asyncio.Future[Any] | None) -> None:
        deadline = time.monotonic() + timeout
        while (self.tasks or self.held) and time.monotonic() < deadline:
            if hurried is not None and hurried.done():
                return
            await asyncio.sleep(0.02)
