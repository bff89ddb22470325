"""The scheduler: one owner for every call and each of its attempts, sans I/O.

Stimuli in, instructions out, as in Dask's ``worker_state_machine``: the pool reports
what happened (a :data:`.stimuli.Stimulus`) to :meth:`Scheduler.handle` and carries out
the instructions it returns (:data:`.stimuli.Instruction`); it decides nothing itself. No
clock (each stimulus carries ``now``), no asyncio, no processes, no randomness but the
``jitter`` function given: the tests are tables of stimuli and instructions.

The kernel holds the queue. A call is sent to a worker when that worker has room to
start it (fewer running than its width), so a call sent has started and a call queued
has not, and every promise about order follows from the queue:

- priority first (0-10, higher first), first-in first-out within one priority
  (:class:`.queue.CallQueue`, with aging), projects at their limit skipped;
- the kernel's own process only where the configuration opted in, while the machine is
  idle (:class:`.stimuli.Load`), and never for a call with a timeout; else the worker
  with the fewest running calls that offers what the call asks; never a draining,
  unhealthy or lost one;
- a cancelled call that has not started never starts;
- ``timeout`` counts from the start on a worker; ``deadline`` bounds the wait in the queue;
- at most once: an attempt that may have started runs again only when the call's
  policy allows (``retries``), and then after a backoff; a call whose attempts keep
  ending with their worker's death is given up after ``max_deaths``;
- an answer from an attempt already given up is dropped, never delivered twice.

One exception, where it cannot break a promise: a call of a function measured short
(under :data:`.ledger.SHORT` seconds, no timeout) may be sent to a busy worker that runs only
such calls, a few milliseconds of work ahead (:func:`.ledger.ahead`), so tiny calls do not pay
a round trip each. A call sent ahead is the best in the queue when it is sent, and it
waits behind at most :data:`.ledger.BUDGET` seconds of measured work. When the call it waits
behind runs late after all (:func:`.ledger.late_after`), the calls held behind it are taken
back (:class:`.stimuli.TakeBack`) and go to the queue again, to run elsewhere.

The queue is strict: when the call at its head fits no free worker, nothing passes it.
A call no worker could ever take must be refused before it is submitted
(:func:`.resources.unsatisfiable`).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Mapping
from typing import ClassVar

from .ledger import (
    BUDGET,
    LATE,
    MAX_AHEAD,
    MAX_REQUEUES,
    SHORT,
    CallRecord,
    WorkerRecord,
    backoff,
    late_after,
    place,
)
from .queue import CallQueue
from .stimuli import (
    Abort,
    Answered,
    CallSpec,
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
    StopWorker,
    Submitted,
    TakeBack,
    Tick,
    WorkerDraining,
    WorkerGone,
    WorkerUnhealthy,
    WorkerUp,
)


class Scheduler:
    """Every call and attempt of one pool, and every decision about them.

    :param jitter: maps a backoff to the delay actually used (tests pass ``lambda d: d``;
        the pool passes full jitter, ``lambda d: random.uniform(0, d)``).
    """

    def __init__(
        self, *, aging: float = 0.0, project_limits: Mapping[str, int] | None = None, max_deaths: int = 3,
        jitter: Callable[[float], float] = lambda delay: delay,
    ) -> None:
        self.queue: CallQueue[CallRecord] = CallQueue(aging)
        self.calls: dict[int, CallRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.means: dict[str, float] = {}  # label -> measured seconds per call
        self._depth: dict[str, int] = {}  # label -> calls per thread it may be sent ahead (0: none)
        self.project_limits = dict(project_limits or {})
        self.project_running: dict[str, int] = {}
        self.max_deaths = max_deaths
        self.local_open = False
        self.closed = False
        self._jitter = jitter
        self._seq = itertools.count()
        self._now = 0.0
        self._stalled = False  # the queue's head fits no worker, and nothing changed since
        self._spare = True  # the last placement left a place for another call like it
        self.wakeup_moved = False  # a Tick may be needed sooner than asked before (the owner resets it)
        # (time, task id[, attempt]) heaps, checked lazily: entries may be stale
        self._deadlines: list[tuple[float, int]] = []
        self._retries: list[tuple[float, int]] = []
        self._timeouts: list[tuple[float, int, int]] = []
        self._retrying: set[int] = set()
        self._draining: set[str] = set()
        self._ahead: set[str] = set()  # workers holding calls sent ahead
        # Attempts given up while they ran (cancel, timeout): they hold their worker's room
        # until it reports them ended (or is gone), so nothing is sent to a worker being stopped.
        self._aborted: dict[int, tuple[int, str]] = {}  # task id -> (attempt, worker id)

    def __repr__(self) -> str:
        return (f"<Scheduler calls={len(self.calls)} queued={self.queued} running={self.running} "
                f"workers={len(self.workers)}>")

    @property
    def queued(self) -> int:
        """Calls not started: waiting in the queue or for a retry."""
        return len(self.queue) + len(self._retrying)

    @property
    def running(self) -> int:
        return sum(len(w.running) for w in self.workers.values())

    def next_wakeup(self) -> float | None:
        """When a :class:`Tick` is next needed (a deadline, a timeout or a retry), if ever;
        while workers hold calls sent ahead, every :data:`.ledger.LATE` seconds too, to see
        whether the call they wait behind runs late."""
        if not (self._deadlines or self._retries or self._timeouts):
            return self._now + LATE if self._ahead else None
        times = [heap[0][0] for heap in (self._deadlines, self._retries, self._timeouts) if heap]
        if self._ahead:
            times.append(self._now + LATE)
        return min(times) if times else None

    def _late_at(self, worker: WorkerRecord) -> float:
        """When the call running first on ``worker`` counts as late."""
        call = self.calls.get(next(iter(worker.running)))  # None: an attempt given up, still ending
        if call is None:
            return worker.last_done + LATE
        return max(call.started_at, worker.last_done) + late_after(self.means.get(call.spec.label))

    # -- stimuli ------------------------------------------------------------------------

    def handle(self, stimulus: Stimulus) -> list[Instruction]:
        """What to do about ``stimulus``, in order."""
        out: list[Instruction] = []
        now = self._now = stimulus.now
        if not self._on[type(stimulus)](self, stimulus, now, out):
            self._settle(now, out)
        return out

    # The two stimuli every call brings, taken without being built (the pool's hot
    # path): each returns exactly what handle() returns for the same stimulus.

    def submitted(self, now: float, call: CallSpec) -> list[Instruction]:
        """``handle(Submitted(now, call))``."""
        out: list[Instruction] = []
        self._now = now
        if not self._submit(call, now, out):
            self._settle(now, out)
        return out

    def answered(self, now: float, task_id: int, attempt: int, retry: bool = False,
                 ran: float | None = None) -> list[Instruction]:
        """``handle(Answered(now, task_id, attempt, retry, ran))``."""
        out: list[Instruction] = []
        self._now = now
        self._answered(task_id, attempt, retry, ran, now, out)
        if self.queue.count and not self.closed:  # _settle, inline
            self._dispatch(now, out)
        if self._draining:
            self._stop_drained(out)
        return out

    def _settle(self, now: float, out: list[Instruction]) -> None:
        """After a change: start what can start, stop what drained."""
        if self.queue.count and not self.closed:
            self._dispatch(now, out)
        if self._draining:
            self._stop_drained(out)

    # Each handler returns True when nothing can have changed for the queue.

    def _on_submitted(self, stimulus: Submitted, now: float, out: list[Instruction]) -> bool:
        return self._submit(stimulus.call, now, out)

    def _on_answered(self, stimulus: Answered, now: float, out: list[Instruction]) -> bool:
        self._answered(stimulus.task_id, stimulus.attempt, stimulus.retry, stimulus.ran, now, out)
        return False

    def _answered(self, task_id: int, attempt: int, retry: bool, ran: float | None, now: float,
                  out: list[Instruction]) -> None:
        answered = self.calls.get(task_id)  # what _current says, in the common case
        if self._aborted or answered is None or answered.attempt != attempt or answered.worker_id is None:
            answered = self._current(task_id, attempt)
            if answered is None:
                return
        worker = self.workers.get(answered.worker_id)  # type: ignore[arg-type]  # _current: it has one
        if worker is not None:
            self._measure(answered, worker, now, ran)
        self._free(answered, worker)
        if retry and answered.tries <= answered.spec.retries and not self.closed:
            self._retry(answered, now, out, "it raised an exception its retry_on names")
        else:  # what _end does, for a call no longer queued, running or retrying
            del self.calls[task_id]
            out.append(Resolve(task_id, "answered", attempt))

    def _on_lost(self, stimulus: Lost, now: float, out: list[Instruction]) -> bool:
        lost = self._current(stimulus.task_id, stimulus.attempt)
        if lost is not None:
            self._lose(lost, now, stimulus.reason, out, started=stimulus.started)
        return False

    def _on_cancelled(self, stimulus: Cancelled, now: float, out: list[Instruction]) -> bool:
        cancelled = self.calls.get(stimulus.task_id)
        if cancelled is not None:
            self._end(cancelled, out, Resolve(stimulus.task_id, "cancelled", cancelled.attempt), abort="cancelled")
        return False

    def _on_worker_up(self, up: WorkerUp, now: float, out: list[Instruction]) -> bool:
        known = self.workers.get(up.worker_id)
        if known is None:
            self.workers[up.worker_id] = WorkerRecord(up.worker_id, max(1, up.width), dict(up.resources), up.local,
                                                 up.overhead, last_done=up.now, budget=up.calls)
        else:  # announced again (a node that reconnected): what it runs stays
            known.width, known.resources, known.healthy = max(1, up.width), dict(up.resources), True
            known.overhead = up.overhead
            known.refresh()
        return False

    def _on_worker_gone(self, gone: WorkerGone, now: float, out: list[Instruction]) -> bool:
        worker = self.workers.pop(gone.worker_id, None)
        self._draining.discard(gone.worker_id)
        self._ahead.discard(gone.worker_id)
        if worker is not None:
            for task_id in list(worker.running):
                if self._aborted.pop(task_id, None) is None:
                    self._lose(self.calls[task_id], now, gone.reason, out, started=True)
        return False

    def _on_worker_unhealthy(self, stimulus: WorkerUnhealthy, now: float, out: list[Instruction]) -> bool:
        if stimulus.worker_id in self.workers:
            worker = self.workers[stimulus.worker_id]
            worker.healthy = stimulus.healthy
            worker.refresh()
        return False

    def _on_worker_draining(self, stimulus: WorkerDraining, now: float, out: list[Instruction]) -> bool:
        if stimulus.worker_id in self.workers:
            worker = self.workers[stimulus.worker_id]
            worker.draining = True
            worker.refresh()
            self._draining.add(stimulus.worker_id)
        return False

    def _on_load(self, stimulus: Load, now: float, out: list[Instruction]) -> bool:
        self.local_open = stimulus.low
        return False

    def _on_project_limit(self, stimulus: ProjectLimit, now: float, out: list[Instruction]) -> bool:
        if stimulus.limit is None:
            self.project_limits.pop(stimulus.project, None)
        else:
            self.project_limits[stimulus.project] = stimulus.limit
        return False

    def _on_closing(self, stimulus: Closing, now: float, out: list[Instruction]) -> bool:
        self.closed = True
        for call in [c for c in self.calls.values() if c.worker_id is None]:
            self._end(call, out, Resolve(call.spec.task_id, "closed", call.attempt))
        return False

    def _on_tick(self, stimulus: Tick, now: float, out: list[Instruction]) -> bool:
        self._expire(now, out)
        return False

    _on: ClassVar[dict[type, Callable[..., bool]]] = {
        Submitted: _on_submitted, Answered: _on_answered, Lost: _on_lost, Cancelled: _on_cancelled,
        WorkerUp: _on_worker_up, WorkerGone: _on_worker_gone, WorkerUnhealthy: _on_worker_unhealthy,
        WorkerDraining: _on_worker_draining, Load: _on_load, ProjectLimit: _on_project_limit,
        Closing: _on_closing, Tick: _on_tick,
    }

    def _submit(self, spec: CallSpec, now: float, out: list[Instruction]) -> bool:
        """Take the call in; True when it only joined the back of a stalled queue."""
        if spec.task_id in self.calls:
            raise ValueError(f"task {spec.task_id} was submitted already")
        call = self.calls[spec.task_id] = CallRecord(spec, now, next(self._seq), spec.priority, spec.project)
        if self.closed:
            self._end(call, out, Resolve(spec.task_id, "closed"))
        elif spec.pinned_to is not None:  # in call order on its worker, which queues it
            worker = self.workers.get(spec.pinned_to)
            if worker is None:
                self._end(call, out, Resolve(spec.task_id, "lost", 0, f"worker {spec.pinned_to} is gone"))
            else:
                self._send(call, worker, now, out)
        elif not self.queue.count and (spec.project is None or self._project_has_room(spec.project)):
            label = spec.label  # nothing waits: no need to queue it first (_place, inline)
            worker, self._spare = place(spec, self.workers.values(), self.local_open, self.means.get(label),
                                        self._depth.get(label, 0))
            if worker is None:
                self._stalled = True
                self._wait(call, now)
                return True
            self._send(call, worker, now, out)
            return True  # the queue is as empty as it was
        else:
            stalled = self._stalled and bool(self.queue.count)
            self._wait(call, now)
            # It may pass nothing: unless it is the queue's new head, nothing more can start.
            return stalled and (self.queue.one_fifo or self.queue.peek(now, self._eligible) is not call)
        return False

    def _wait(self, call: CallRecord, now: float) -> None:
        """Queue ``call`` (newly submitted)."""
        self.queue.push(call)
        call.waiting = True
        deadline = call.spec.deadline
        if deadline is not None:
            heapq.heappush(self._deadlines, (now + deadline, call.spec.task_id))
            self.wakeup_moved = True

    def _enqueue(self, call: CallRecord, *, back: bool = False) -> None:
        if back:
            self.queue.put_back(call)
        else:
            self.queue.push(call)
        call.waiting = True

    # -- decisions ----------------------------------------------------------------------

    def _current(self, task_id: int, attempt: int) -> CallRecord | None:
        """The call, if ``attempt`` is its running attempt (else a late answer: dropped)."""
        aborted = self._aborted.get(task_id) if self._aborted else None
        if aborted is not None and aborted[0] == attempt:  # the given-up attempt ended: its room is free
            del self._aborted[task_id]
            worker = self.workers.get(aborted[1])
            if worker is not None:
                worker.running.pop(task_id, None)
                if worker.late == task_id:
                    worker.late = None
            return None
        call = self.calls.get(task_id)
        if call is None or call.attempt != attempt or call.worker_id is None:
            return None
        return call

    def _dispatch(self, now: float, out: list[Instruction]) -> None:
        queue = self.queue
        self._stalled = False
        placed: CallSpec | None = None
        eligible = self._project_has_room if self.project_limits else None  # _eligible, inline
        while queue.count:
            call = queue.peek(now, eligible)
            if call is None:
                return
            spec = call.spec
            if (placed is not None and not self._spare and spec.label == placed.label and not spec.resources
                    and spec.timeout is None and spec.pinned_to is None):
                self._stalled = True  # the last place for its like was just taken
                return
            worker = self._place(call)
            if worker is None:
                self._stalled = True
                return  # the head call fits no worker; nothing behind it may pass it
            placed = spec
            queue.discard(call)
            call.waiting = False
            self._send(call, worker, now, out)

    def _send(self, call: CallRecord, worker: WorkerRecord, now: float, out: list[Instruction]) -> None:
        """Send ``call`` to ``worker``; unless pinned, it counts against its project until freed."""
        spec = call.spec
        task_id = spec.task_id
        attempt = call.attempt = call.attempt + 1
        call.tries += 1
        call.worker_id = worker.id
        call.started_at = now
        mean = self.means.get(spec.label)
        if mean is None or mean >= SHORT:
            call.unsure = True
            worker.unsure += 1
        running = worker.running
        running[task_id] = None
        if len(running) > worker.width and worker.id not in self._ahead:
            self._ahead.add(worker.id)
            self.wakeup_moved = True
        if worker.budget is not None:
            worker.budget -= 1
            worker.refresh()
        if spec.project is not None and spec.pinned_to is None:
            self.project_running[spec.project] = self.project_running.get(spec.project, 0) + 1
        if spec.timeout is not None:
            heapq.heappush(self._timeouts, (now + spec.timeout, task_id, attempt))
            self.wakeup_moved = True
        out.append(Send(task_id, attempt, worker.id))

    def _place(self, call: CallRecord) -> WorkerRecord | None:
        """Where ``call`` goes now, if anywhere (:func:`.ledger.place`); :attr:`_spare`
        says whether a call like it would still find a place after it."""
        spec = call.spec
        label = spec.label
        worker, self._spare = place(spec, self.workers.values(), self.local_open, self.means.get(label),
                                    self._depth.get(label, 0))
        return worker

    def _measure(self, call: CallRecord, worker: WorkerRecord, now: float, ran: float | None) -> None:
        last = worker.last_done
        took = ran if ran is not None else now - (call.started_at if call.started_at > last else last)
        worker.last_done = now
        label = call.spec.label
        old = self.means.get(label)
        mean = self.means[label] = took if old is None else old * 0.8 + took * 0.2
        # ahead(mean), inline (for every answer): 1 + enough calls to cover BUDGET
        self._depth[label] = min(MAX_AHEAD, 1 + math.ceil(BUDGET / max(mean, 1e-6))) if mean < SHORT else 0

    @property
    def _eligible(self) -> Callable[[str | None], bool] | None:
        return self._project_has_room if self.project_limits else None

    def _project_has_room(self, project: str | None) -> bool:
        if project is None:
            return True
        limit = self.project_limits.get(project)
        return limit is None or self.project_running.get(project, 0) < limit

    def _free(self, call: CallRecord, worker: WorkerRecord | None, *, keep_room: bool = False) -> None:
        """The current attempt is over for its call (its room on ``worker``, where it ran,
        too, unless ``keep_room``: it still runs there, given up). ``worker`` None: the
        worker is gone, and its record."""
        if worker is not None:
            if call.unsure:
                worker.unsure -= 1
            if not keep_room:
                task_id = call.spec.task_id
                worker.running.pop(task_id, None)
                if worker.late == task_id:
                    worker.late = None
        call.unsure = False
        if call.project is not None and call.spec.pinned_to is None:
            self.project_running[call.project] -= 1
        call.worker_id = None

    def _worker_of(self, call: CallRecord) -> WorkerRecord | None:
        return self.workers.get(call.worker_id) if call.worker_id is not None else None

    def _lose(self, call: CallRecord, now: float, reason: str, out: list[Instruction], *, started: bool) -> None:
        worker_id = call.worker_id
        self._free(call, self._worker_of(call))
        task_id = call.spec.task_id
        if not started and call.spec.pinned_to is None:
            call.tries -= 1
            call.requeues += 1
            if call.requeues <= MAX_REQUEUES and not self.closed:
                self._enqueue(call, back=True)  # it never began: in its place again, at no cost to its retries
                return
        if started:
            call.deaths += 1
        if call.deaths >= self.max_deaths and call.spec.retries:
            self._end(call, out, Resolve(task_id, "lost", call.attempt,
                                         f"{reason}; given up after {call.deaths} workers died running it",
                                         worker_id, gave_up=True))
        elif call.tries <= call.spec.retries and started and not self.closed and call.spec.pinned_to is None:
            self._retry(call, now, out, reason)
        else:
            self._end(call, out, Resolve(task_id, "lost", call.attempt, reason, worker_id))

    def _retry(self, call: CallRecord, now: float, out: list[Instruction], reason: str) -> None:
        at = now + self._jitter(backoff(call.tries))
        heapq.heappush(self._retries, (at, call.spec.task_id))
        self.wakeup_moved = True
        self._retrying.add(call.spec.task_id)
        out.append(RetryAt(call.spec.task_id, at, call.attempt, reason))

    def _end(self, call: CallRecord, out: list[Instruction], resolve: Resolve, *, abort: str = "") -> None:
        """Resolve ``call``; a running attempt is stopped by force when ``abort`` says why."""
        task_id = call.spec.task_id
        if call.worker_id is not None:
            if abort:
                out.append(Abort(task_id, call.attempt, call.worker_id, abort))
                self._aborted[task_id] = (call.attempt, call.worker_id)
            self._free(call, self._worker_of(call), keep_room=bool(abort))
        elif call.waiting:
            self.queue.discard(call)
        else:
            self._retrying.discard(task_id)
        del self.calls[task_id]
        out.append(resolve)

    def _expire(self, now: float, out: list[Instruction]) -> None:
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            _, task_id, attempt = heapq.heappop(timeouts)
            call = self.calls.get(task_id)
            if call is not None and call.attempt == attempt and call.worker_id is not None:
                self._end(call, out, Resolve(task_id, "timeout", attempt,
                                             f"ran past its timeout of {call.spec.timeout:g} s", call.worker_id),
                          abort="timeout")
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id = heapq.heappop(self._deadlines)
            waiting = self.calls.get(task_id)
            if waiting is not None and waiting.tries == 0 and waiting.worker_id is None:
                self._end(waiting, out, Resolve(task_id, "expired", waiting.attempt,
                                                f"waited past its deadline of {waiting.spec.deadline:g} s"))
        while self._retries and self._retries[0][0] <= now:
            _, task_id = heapq.heappop(self._retries)
            due = self.calls.get(task_id)
            if due is not None and task_id in self._retrying:
                self._retrying.discard(task_id)
                due.queued_at = now
                self._enqueue(due)
        if self._ahead:
            self._take_back(now, out)

    def _take_back(self, now: float, out: list[Instruction]) -> None:
        for worker_id in list(self._ahead):
            worker = self.workers.get(worker_id)
            if worker is None or len(worker.running) <= worker.width:
                self._ahead.discard(worker_id)
                continue
            if worker.late is not None or now < self._late_at(worker):
                continue
            worker.late = next(iter(worker.running))  # until it ends, nothing more goes ahead to it
            for task_id in list(worker.running)[worker.width:]:
                held = self.calls.get(task_id)  # None: given up, still ending; pinned: it must run there
                if held is not None and held.spec.pinned_to is None:
                    out.append(TakeBack(task_id, held.attempt, worker_id))

    def _stop_drained(self, out: list[Instruction]) -> None:
        for worker_id in [w for w in self._draining if not self.workers[w].running]:
            del self.workers[worker_id]
            self._draining.discard(worker_id)
            out.append(StopWorker(worker_id, "drained"))
