"""The pool of executors: it carries out what the scheduler decides.

:class:`WorkerPool` reports what happens (a call submitted or cancelled, an attempt's
answer, a worker up, unhealthy or gone, the clock) to its :class:`..scheduling.scheduler.Scheduler`
and carries out the instructions it gets back: send an attempt to a worker, stop one
by force, settle a caller's future, wake up for a retry or a time limit. It decides
nothing about a call itself. Its :class:`.fleet.Fleet` looks after the workers, and
:class:`.scaling.Scaling` decides with the scaling policy how many run. The hot path
(:meth:`WorkerPool.submit` -> executor -> reply) creates no task per call.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from kernel.errors import ExecutionError

from ..errors import CallRevokedError, PoolClosedError, WorkerStartError
from ..events import EventBus
from ..executors import Attempt, CallHost, ReplyFuture, Worker, WorkerFactory, WorkerInfo
from ..scheduling import Scheduler, fits, tightness
from ..scheduling.stimuli import (
    AbortAttempt,
    AbortReason,
    Answered,
    CancelAsked,
    Closing,
    Instruction,
    Lost,
    Outcome,
    ProjectLimit,
    Resolve,
    RetryAt,
    Send,
    Stimulus,
    StopWorker,
    Submitted,
    TakeBack,
    Tick,
    WakeAt,
    WorkerUnhealthy,
)
from ..settings import Settings
from ..wire import loads
from .admission import Admission
from .fleet import Fleet, PoolWorker
from .handles import CallFuture, error_for, rebuild
from .operations import Operations
from .scaling import Scaling
from .snapshot import PoolSnapshot, take
from .tally import Tally, Timings

log = structlog.get_logger("execution-manager")


def _jitter(delay: float) -> float:
    return random.uniform(delay / 2, delay)  # equal jitter: never sooner than half the backoff


class WorkerPool:
    """The calls of one execution manager, placed on its :class:`.fleet.Fleet` of workers."""

    def __init__(
        self,
        settings: Settings,
        factory: WorkerFactory,
        events: EventBus,
        *,
        in_process_factory: WorkerFactory | None = None,
        host: CallHost | None = None,
        timings: Timings | None = None,
    ) -> None:
        self.sched = Scheduler(aging=settings.aging_seconds, project_limits=settings.project_limits,
                               max_deaths=settings.max_call_deaths, jitter=_jitter)
        self.events = events
        self.tasks: dict[int, CallFuture] = {}  # calls the scheduler owns, by task id
        self.placements: deque[dict[str, Any]] = deque(maxlen=20)  # the last resource-aware choices
        self.stopping = False  # no new calls
        self.tally = Tally(events, timings)
        # A new task id, each call: a C method, no Python frame (it is asked for every call).
        self.next_id: Callable[[], int] = itertools.count(1).__next__
        self._stimuli: deque[Stimulus] = deque()
        self._handling = False
        self._grow_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.loop = asyncio.get_running_loop()
        self.admission = Admission(settings.max_queue, self.sched, self.loop)
        self.fleet = Fleet(settings, factory, events, self.sched, self.feed, no_workers=self._no_workers, host=host,
                           in_process_factory=in_process_factory)
        self.scaling = Scaling(self.fleet, self.sched, self.feed, events)  # how many workers run
        # The operator's actions, by worker and task id.
        self.operations = Operations(self.fleet, self.tasks, self.admission, self.sched, self.tally, self.feed)
        self._worker = self.fleet.find
        self._on_reply = self._replied  # bound once: it follows every attempt

    def __repr__(self) -> str:
        members = self.fleet.members
        busy = sum(1 for s in members if s.running)
        return (f"<WorkerPool workers={len(members)} busy={busy} queued={self.sched.queued} "
                f"held={len(self.admission.held)} running={len(self.tasks) - self.waiting}>")

    @property
    def settings(self) -> Settings:
        """The execution manager's settings (the fleet's: its bounds change while running)."""
        return self.fleet.settings

    @property
    def closed(self) -> bool:
        """Whether the pool has stopped dispatching (its workers are being stopped)."""
        return self.fleet.closed

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
        # Then, the scheduler settled: room for held calls, a worker
        # started for calls that wait (inline: twice for every call).
        sched = self.sched
        admission = self.admission
        if admission.most is not None and admission.busy:  # (nothing is held without maxQueue)
            admission.admit(self._admitted)
        if sched.queue.count and not self._grow_pending and self.fleet.starting < sched.queue.count:
            self._grow_pending = True  # looked at once per turn of the loop, not per call
            self.loop.call_soon(self._grow)

    def _grow(self) -> None:
        self._grow_pending = False
        self.scaling.grow()

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
        elif type(instruction) is AbortAttempt:
            self._abort(instruction)
        elif type(instruction) is TakeBack:
            worker = self._worker(instruction.worker_id)
            if worker is not None:
                worker.backend.cancel(instruction.task_id)  # else it simply runs there, late
        elif type(instruction) is StopWorker:
            self.fleet.stop_worker(instruction)
        elif type(instruction) is WakeAt:
            self._arm(instruction.at)

    def _retrying(self, retry: RetryAt) -> None:
        self.tally.retrying(self.tasks[retry.task_id], retry.attempt, retry.reason)

    def _abort(self, abort: AbortAttempt) -> None:
        worker = self._worker(abort.worker_id)
        if worker is None:
            return
        fut = self.tasks[abort.task_id]  # resolved by the next instruction
        note = f"{fut.describe()} {fut.revoked or 'was cancelled'}"
        if abort.reason is AbortReason.TIMEOUT:
            note = f"{fut.describe()} ran past its timeout of {fut.spec.timeout:g} s"
        worker.backend.abort(abort.task_id, note)

    # -- calls ------------------------------------------------------------------------

    def submit(self, fut: CallFuture) -> CallFuture:
        """Hand ``fut``'s call to the scheduler (or hold it while ``maxQueue`` calls wait)."""
        if self.stopping:
            raise PoolClosedError("the execution manager is shutting down and takes no new calls")
        spec = fut.spec
        self.tasks[spec.task_id] = fut
        now = fut.queued_at = self.loop.time()
        admission = self.admission
        if admission.most is not None and admission.full and spec.pinned_to is None:
            admission.held.append(fut)  # admitted, in order, as room frees
        elif self._handling:
            self._stimuli.append(Submitted(now, spec))
        else:
            self._carry(self.sched.submitted(now, spec))
        return fut

    def cancel(self, fut: CallFuture) -> None:
        """The caller cancelled ``fut``: a call not started never starts; a running one is
        stopped by force (a pinned instance's call is left to finish: its worker holds
        the instance)."""
        if self.admission.withdraw(fut):
            self.tasks.pop(fut.task_id, None)
        elif fut.spec.pinned_to is None:
            self.feed(CancelAsked(self.loop.time(), fut.task_id))

    def _send(self, send: Send) -> None:
        fut = self.tasks[send.task_id]
        spec = fut.spec
        worker_id = send.worker_id
        worker = self._worker(worker_id)
        reply = ReplyFuture()
        call = reply.call = Attempt(spec.task_id, fut.kind, fut.payload, reply, spec.label, fut.args, spec.priority,
                    spec.project, fut.soft_timeout, spec.resources, attempt=send.attempt, timeout=spec.timeout,
                    worker_id=worker_id, on_progress=fut.report_progress, context=fut.context,
                    started=time.perf_counter(), watch=fut.watch)
        fut.current = call
        if self.tally.timings is not None:
            self.tally.waited(self.loop.time() - fut.queued_at)
        need = spec.resources
        if need:  # what was chosen among which (and how tightly the call fits each)
            self.placements.append({"call": fut.describe(), "worker": worker_id, "fits": {
                w.id: tightness(w.resources, need) for w in self.fleet.members if fits(w.resources, need)}})
        if worker is None:
            self.feed(Lost(self.loop.time(), send.task_id, send.attempt, f"worker {worker_id} is gone",
                           started=False))
            return
        if call.watch is not None:
            call.watch.sent(call)
        try:
            worker.backend.submit(call)
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
        if worker is not None and not worker.backend.inflight:
            worker.idle_since = now
        if reply.cancelled():  # dropped before it began
            self.feed(Lost(now, call.id, call.attempt, "dropped before it began", started=False))
            return
        exc = reply.exception()
        if exc is None:
            ok, data = reply.result()
            tally = self.tally
            if worker is not None and (tally.timings is not None or tally.events.active
                                       or self.fleet.settings.max_tasks_per_worker is not None):
                self._count(worker, call, ok)  # timings, events someone hears, or a task limit to count
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
            fut.answer = (call.attempt, error)
            retry = isinstance(error, fut.retry_on) or (isinstance(error, ExecutionError) and error.retryable)
            self.tally.attempt_failed(fut, call, error, note=retry)
            self.feed(Answered(now, call.id, call.attempt, retry, call.ran))
            return
        started = not isinstance(exc, PoolClosedError) and getattr(exc, "started", True)
        if fut is not None:
            fut.answer = (call.attempt, exc)
        if started:
            self.tally.attempt_failed(fut, call, exc, note=True)
        self.feed(Lost(now, call.id, call.attempt, str(exc), started=bool(started)))

    def _count(self, worker: PoolWorker, attempt: Attempt, ok: bool) -> None:
        self.tally.ran(worker.id, attempt, ok)
        limit = self.settings.max_tasks_per_worker
        ex = worker.backend
        if limit is not None and worker is not self.fleet.in_process and ex.done + ex.failed >= limit:
            self.fleet.recycle(worker, f"ran {limit} calls (maxTasksPerWorker)")

    def _resolve(self, resolve: Resolve) -> None:
        fut = self.tasks.pop(resolve.task_id, None)
        if fut is None or fut.done():
            return
        outcome = resolve.outcome
        answer = fut.answer if fut.answer is not None and fut.answer[0] == resolve.attempt else None
        fut.answer = None
        if outcome is Outcome.ANSWERED and answer is not None and isinstance(answer[1], bytes):
            try:
                value = loads(answer[1])
            except Exception as err:
                self.tally.fail(fut, ExecutionError(
                    f"cannot unpickle the result of {fut.describe()} here: {type(err).__name__}: {err}"))
                return
            self.tally.done += 1
            fut.set_result(value)
            return
        if outcome is Outcome.CANCELLED:
            if fut.revoked is not None:  # by its task id, not by its caller: the caller hears why
                self.tally.fail(fut, CallRevokedError(f"{fut.describe()} {fut.revoked}"))
            return
        self.tally.fail(fut, error_for(fut, resolve, answer[1] if answer is not None else None, self.sched.max_deaths))

    # -- the queue --------------------------------------------------------------------

    def worker_infos(self) -> dict[str, WorkerInfo]:
        """Each worker's :class:`WorkerInfo` (cheap: what the sampler needs, every sample)."""
        return {w.id: w.backend.info() for w in self.fleet.members}

    def snapshot(self) -> PoolSnapshot:
        """The pool now, for its readers (see :mod:`.snapshot`)."""
        return take(self.fleet, self.scaling, self.sched, self.tally, len(self.admission.held), self.placements)

    @property
    def queued(self) -> int:
        """Calls admitted and not started: in the queue or waiting for a retry."""
        return self.sched.queued

    @property
    def waiting(self) -> int:
        """Calls not started: queued, waiting for a retry, or held back by maxQueue."""
        return self.sched.queued + len(self.admission.held)

    def _admitted(self, fut: CallFuture) -> None:
        self.feed(Submitted(self.loop.time(), fut.spec))

    def set_project_limit(self, project: str, limit: int | None) -> None:
        self.feed(ProjectLimit(self.loop.time(), project, limit))

    def _no_workers(self, why: str) -> None:
        """No worker could start and none is left: the calls waiting for one fail."""
        for waiting in list(self.sched.queue):
            fut = self.tasks.get(waiting.spec.task_id)
            self.feed(CancelAsked(self.loop.time(), waiting.spec.task_id))
            if fut is not None and not fut.done():
                self.tally.fail(fut, WorkerStartError(f"{fut.describe()} cannot run: {why}"))

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if not await self.fleet.start():
            await self.stop()
            raise WorkerStartError(
                f"none of the {self.settings.min_workers} minimum workers "
                f"({self.settings.node_type}) could start; see the log for why"
            )

    # The pool is its node listeners' NodeHost (executors.nodes): adopt and retire.

    def adopt(self, executor: Worker) -> None:
        self.fleet.adopt(executor)

    async def retire(self, worker_id: str, reason: str = "retired") -> None:
        """See :meth:`.operations.Operations.retire` (draining)."""
        await self.operations.retire(worker_id, reason)

    def check_resources(self, request: Mapping[str, float], label: str) -> None:
        """Refuse at once a request no worker could ever satisfy.

        :raises UnsatisfiableError: naming the call and what the workers offer.
        """
        self.fleet.check_resources(request, label)

    @property
    def worker_count(self) -> int:
        """Workers in the pool (not the in-process one)."""
        return len(self.fleet.members)

    async def stop(self, hurry: asyncio.Event | None = None) -> None:
        """Shut down: refuse new calls, run the queue first (``drainQueue``) or cancel
        it, give running calls ``drainTimeout`` seconds, then stop every worker. When
        ``hurry`` is set meanwhile (a second signal), running calls are stopped at once."""
        s = self.settings
        self.stopping = self.admission.closed = True
        hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else None
        try:
            if s.drain_queue and self.tasks:
                await self._until_idle(s.drain_timeout, hurried)
            self.fleet.closed = True
            for fut in self.admission.close():
                self.tasks.pop(fut.task_id, None)
                if not fut.done():
                    self.tally.fail(fut, PoolClosedError(f"{fut.describe()} was cancelled before it ran: "
                                                    "the execution manager is shutting down"))
            self.feed(Closing(self.loop.time()))
            await self.fleet.stop(hurried)
        finally:
            if hurried is not None:
                hurried.cancel()
            if self._timer is not None:
                self._timer.cancel()
        await self.fleet.background.join()

    async def _until_idle(self, timeout: float, hurried: asyncio.Future[Any] | None) -> None:
        deadline = self.loop.time() + timeout
        while self.tasks and self.loop.time() < deadline:
            if hurried is not None and hurried.done():
                return
            await asyncio.sleep(0.02)
