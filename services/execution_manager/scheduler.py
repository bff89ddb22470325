"""The scheduler: one owner for every call and each of its attempts, sans I/O.

Stimuli in, instructions out, as in Dask's ``worker_state_machine``: the pool reports
what happened (a :data:`.stimuli.Stimulus`) to :meth:`Scheduler.handle` and carries out
the instructions it returns (:data:`.stimuli.Instruction`); it decides nothing itself. No clock (each
stimulus carries ``now``), no asyncio, no processes, no randomness but the ``jitter``
function given: the tests are tables of stimuli and instructions.

The kernel holds the queue. A call is sent to a worker only when that worker has room
to start it (fewer running than its width), so a call sent has started, a call queued
has not, and every promise about order follows from the queue:

- priority first (0-10, higher first), first-in first-out within one priority
  (:class:`.queue.CallQueue`, with aging), projects at their limit skipped;
- the available worker with the fewest running calls that offers what the call asks;
  never a draining, unhealthy or lost one;
- a cancelled call that has not started never starts;
- ``timeout`` counts from the start on a worker; ``deadline`` bounds the wait in the queue;
- at most once: an attempt that may have started runs again only when the call's
  policy allows (``retries``), and then after a backoff; a call whose attempts keep
  ending with their worker's death is given up after ``max_deaths``;
- an answer from an attempt already given up is dropped, never delivered twice.

The queue is strict: when the call at its head fits no free worker, nothing passes it.
A call no worker could ever take must be refused before it is submitted
(:func:`.resources.unsatisfiable`).

This step stands beside the pool; the pool is switched over to it next (issue 16).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .queue import CallQueue
from .resources import fits
from .stimuli import (
    Abort,
    Answered,
    CallSpec,
    Cancelled,
    Instruction,
    Lost,
    Resolve,
    RetryAt,
    Send,
    Stimulus,
    StopWorker,
    Submitted,
    Tick,
    WorkerDraining,
    WorkerGone,
    WorkerUnhealthy,
    WorkerUp,
)

# -- state ----------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Call:
    spec: CallSpec
    queued_at: float
    attempt: int = 0
    worker_id: str | None = None  # where its current attempt runs
    started_at: float = 0.0
    deaths: int = 0

    @property
    def priority(self) -> int:
        return self.spec.priority

    @property
    def project(self) -> str | None:
        return self.spec.project


@dataclass(slots=True, eq=False)
class _Worker:
    id: str
    width: int
    resources: Mapping[str, float]
    running: set[int] = field(default_factory=set)
    healthy: bool = True
    draining: bool = False

    @property
    def has_room(self) -> bool:
        return self.healthy and not self.draining and len(self.running) < self.width


def backoff(attempt: int, base: float = 0.1, cap: float = 30.0) -> float:
    """Seconds before attempt ``attempt + 1``: exponential from ``base``, capped."""
    return min(cap, base * 2.0 ** max(0, attempt - 1))


class Scheduler:
    """Every call and attempt of one pool, and every decision about them.

    :param jitter: maps a backoff to the delay actually used (tests pass ``lambda d: d``;
        the pool passes full jitter, ``lambda d: random.uniform(0, d)``).
    """

    def __init__(
        self, *, aging: float = 0.0, project_limits: Mapping[str, int] | None = None, max_deaths: int = 3,
        jitter: Callable[[float], float] = lambda delay: delay,
    ) -> None:
        self.queue: CallQueue[_Call] = CallQueue(aging)
        self.calls: dict[int, _Call] = {}
        self.workers: dict[str, _Worker] = {}
        self.project_limits = dict(project_limits or {})
        self.project_running: dict[str, int] = {}
        self.max_deaths = max_deaths
        self._jitter = jitter
        self._deadlines: list[tuple[float, int]] = []  # (time, task id), checked lazily
        self._retries: list[tuple[float, int]] = []  # (time, task id), checked lazily
        self._retrying: set[int] = set()
        # Attempts given up while they ran (cancel, timeout): they hold their worker's room
        # until it reports them ended (or is gone), so nothing is sent to a worker being stopped.
        self._aborted: dict[int, tuple[int, str]] = {}  # task id -> (attempt, worker id)

    def __repr__(self) -> str:
        running = sum(len(w.running) for w in self.workers.values())
        return (f"<Scheduler calls={len(self.calls)} queued={self.queued} running={running} "
                f"workers={len(self.workers)}>")

    @property
    def queued(self) -> int:
        """Calls not started: waiting in the queue or for a retry."""
        return len(self.queue) + len(self._retrying)

    def next_wakeup(self) -> float | None:
        """When a :class:`Tick` is next needed (a deadline, a timeout or a retry), if ever."""
        times = [t for heap in (self._deadlines, self._retries) for t, _ in heap[:1]]
        times += [c.started_at + c.spec.timeout for c in self._running() if c.spec.timeout is not None]
        return min(times, default=None)

    def _running(self) -> list[_Call]:
        return [self.calls[t] for w in self.workers.values() for t in w.running if t not in self._aborted]

    # -- stimuli ------------------------------------------------------------------------

    def handle(self, stimulus: Stimulus) -> list[Instruction]:
        """What to do about ``stimulus``, in order."""
        out: list[Instruction] = []
        now = stimulus.now
        match stimulus:
            case Submitted(call=spec):
                if spec.task_id in self.calls:
                    raise ValueError(f"task {spec.task_id} was submitted already")
                new = self.calls[spec.task_id] = _Call(spec, now)
                self.queue.push(new)
                if spec.deadline is not None:
                    heapq.heappush(self._deadlines, (now + spec.deadline, spec.task_id))
            case Cancelled(task_id=task_id):
                cancelled = self.calls.get(task_id)
                if cancelled is not None:
                    self._end(cancelled, out, Resolve(task_id, "cancelled", cancelled.attempt), abort="cancelled")
            case Answered(task_id=task_id, attempt=attempt, retry=retry):
                answered = self._current(task_id, attempt)
                if answered is not None:
                    self._free(answered)
                    if retry and answered.attempt <= answered.spec.retries:
                        self._retry(answered, now, out, "it raised an exception its retry_on names")
                    else:
                        self._end(answered, out, Resolve(task_id, "answered", attempt))
            case Lost(task_id=task_id, attempt=attempt, reason=reason):
                lost = self._current(task_id, attempt)
                if lost is not None:
                    self._lose(lost, now, reason, out)
            case WorkerUp(worker_id=worker_id, width=width, resources=resources):
                known = self.workers.get(worker_id)
                if known is None:
                    self.workers[worker_id] = _Worker(worker_id, max(1, width), dict(resources))
                else:  # announced again (a node that reconnected): what it runs stays
                    known.width, known.resources, known.healthy = max(1, width), dict(resources), True
            case WorkerGone(worker_id=worker_id, reason=reason):
                worker = self.workers.pop(worker_id, None)
                if worker is not None:
                    for task_id in sorted(worker.running):
                        if self._aborted.pop(task_id, None) is None:
                            self._lose(self.calls[task_id], now, reason, out)
            case WorkerUnhealthy(worker_id=worker_id, healthy=healthy):
                if worker_id in self.workers:
                    self.workers[worker_id].healthy = healthy
            case WorkerDraining(worker_id=worker_id):
                worker = self.workers.get(worker_id)
                if worker is not None:
                    worker.draining = True
            case Tick():
                self._expire(now, out)
        self._dispatch(now, out)
        self._stop_drained(out)
        return out

    # -- decisions ----------------------------------------------------------------------

    def _current(self, task_id: int, attempt: int) -> _Call | None:
        """The call, if ``attempt`` is its running attempt (else a late answer: dropped)."""
        aborted = self._aborted.get(task_id)
        if aborted is not None and aborted[0] == attempt:  # the given-up attempt ended: its room is free
            del self._aborted[task_id]
            worker = self.workers.get(aborted[1])
            if worker is not None:
                worker.running.discard(task_id)
            return None
        call = self.calls.get(task_id)
        if call is None or call.attempt != attempt or call.worker_id is None:
            return None
        return call

    def _dispatch(self, now: float, out: list[Instruction]) -> None:
        while self.queue:
            if not any(w.has_room for w in self.workers.values()):
                return
            call = self.queue.peek(now, self._project_has_room)
            if call is None:
                return
            worker = self._place(call)
            if worker is None:
                return  # the head call fits no free worker; nothing behind it may pass it
            self.queue.discard(call)
            call.attempt += 1
            call.worker_id = worker.id
            call.started_at = now
            worker.running.add(call.spec.task_id)
            if call.spec.project is not None:
                self.project_running[call.spec.project] = self.project_running.get(call.spec.project, 0) + 1
            out.append(Send(call.spec.task_id, call.attempt, worker.id))

    def _place(self, call: _Call) -> _Worker | None:
        need = call.spec.resources
        free = [w for w in self.workers.values() if w.has_room and (not need or fits(w.resources, need))]
        return min(free, key=lambda w: (len(w.running), w.id), default=None)

    def _project_has_room(self, project: str | None) -> bool:
        if project is None:
            return True
        limit = self.project_limits.get(project)
        return limit is None or self.project_running.get(project, 0) < limit

    def _free(self, call: _Call, *, keep_room: bool = False) -> None:
        """The current attempt is over for its call (its room on the worker too, unless
        ``keep_room``: it still runs there, given up)."""
        worker = self.workers.get(call.worker_id or "")  # None: the worker is gone, and its record
        if worker is not None and not keep_room:
            worker.running.discard(call.spec.task_id)
        if call.spec.project is not None:
            self.project_running[call.spec.project] -= 1
        call.worker_id = None

    def _lose(self, call: _Call, now: float, reason: str, out: list[Instruction]) -> None:
        worker_id = call.worker_id
        self._free(call)
        call.deaths += 1
        if call.deaths >= self.max_deaths and call.spec.retries:
            self._end(call, out, Resolve(call.spec.task_id, "lost", call.attempt,
                                         f"{reason}; given up after {call.deaths} workers died running it",
                                         worker_id))
        elif call.attempt <= call.spec.retries:
            self._retry(call, now, out, reason)
        else:
            self._end(call, out, Resolve(call.spec.task_id, "lost", call.attempt, reason, worker_id))

    def _retry(self, call: _Call, now: float, out: list[Instruction], reason: str) -> None:
        at = now + self._jitter(backoff(call.attempt))
        heapq.heappush(self._retries, (at, call.spec.task_id))
        self._retrying.add(call.spec.task_id)
        out.append(RetryAt(call.spec.task_id, at, call.attempt, reason))

    def _end(self, call: _Call, out: list[Instruction], resolve: Resolve, *, abort: str = "") -> None:
        """Resolve ``call``; a running attempt is stopped by force when ``abort`` says why."""
        task_id = call.spec.task_id
        if call.worker_id is not None:
            if abort:
                out.append(Abort(task_id, call.attempt, call.worker_id, abort))
                self._aborted[task_id] = (call.attempt, call.worker_id)
            self._free(call, keep_room=bool(abort))
        self.queue.discard(call)
        self._retrying.discard(task_id)
        del self.calls[task_id]
        out.append(resolve)

    def _expire(self, now: float, out: list[Instruction]) -> None:
        for call in self._running():
            timeout = call.spec.timeout
            if timeout is not None and now >= call.started_at + timeout:
                self._end(call, out, Resolve(call.spec.task_id, "timeout", call.attempt,
                                             f"ran past its timeout of {timeout:g} s", call.worker_id),
                          abort="timeout")
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id = heapq.heappop(self._deadlines)
            waiting = self.calls.get(task_id)
            if waiting is not None and waiting.attempt == 0 and waiting.worker_id is None:
                self._end(waiting, out, Resolve(task_id, "expired", 0,
                                                f"waited past its deadline of {waiting.spec.deadline:g} s"))
        while self._retries and self._retries[0][0] <= now:
            _, task_id = heapq.heappop(self._retries)
            due = self.calls.get(task_id)
            if due is not None and task_id in self._retrying:
                self._retrying.discard(task_id)
                due.queued_at = now
                self.queue.push(due)

    def _stop_drained(self, out: list[Instruction]) -> None:
        for worker in [w for w in self.workers.values() if w.draining and not w.running]:
            del self.workers[worker.id]
            out.append(StopWorker(worker.id, "drained"))
