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

One exception, where it cannot break a promise: a call of a function measured short may
be sent ahead to a busy worker, and taken back if the call it waits behind runs late
(:mod:`.roster`).

The queue is strict: when the call at its head fits no free worker, nothing passes it.
A call no worker could ever take must be refused before it is submitted
(:func:`.resources.unsatisfiable`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

from . import stimuli as st
from .ledger import LATE, MAX_REQUEUES, SHORT, CallRecord, Durations, WorkerRecord, backoff, place
from .projects import Projects
from .queue import CallQueue
from .roster import Roster
from .timers import Timers


class Scheduler:
    """Every call and attempt of one pool, and every decision about them.

    :param jitter: maps a backoff to the delay actually used (tests pass ``lambda d: d``;
        the pool passes equal jitter, ``lambda d: random.uniform(d / 2, d)``).
    """

    def __init__(
        self, *, aging: float = 0.0, project_limits: Mapping[str, int] | None = None, max_deaths: int = 3,
        jitter: Callable[[float], float] = lambda delay: delay,
    ) -> None:
        self.queue: CallQueue[CallRecord] = CallQueue(aging)
        self.calls: dict[int, CallRecord] = {}
        self.roster = Roster()
        self.workers = self.roster.records  # (read on every placement)
        self.durations = Durations()
        self.projects = Projects(project_limits)
        self.max_deaths = max_deaths
        self.in_process_open = False
        self.closed = False
        self._jitter = jitter
        self._seq = itertools.count()
        self._now = 0.0
        self._stalled = False  # the queue's head fits no worker, and nothing changed since
        self._spare = True  # the last placement left a place for another call like it
        self._moved = False  # a Tick may be needed sooner than asked before: a WakeAt ends the batch
        self.timers = Timers()
        self._retrying: set[int] = set()
        # Attempts given up while they ran (cancel, timeout): they hold their worker's room
        # until it reports them ended (or is gone), so nothing is sent to a worker being stopped.
        self._aborted: dict[int, tuple[int, str]] = {}  # task id -> (attempt, worker id)

    def __repr__(self) -> str:
        return (f"<Scheduler calls={len(self.calls)} queued={self.queued} running={self.roster.running} "
                f"workers={len(self.workers)}>")

    @property
    def queued(self) -> int:
        """Calls not started: waiting in the queue or for a retry."""
        return len(self.queue) + len(self._retrying)

    def running_on(self, task_id: int) -> str | None:
        """The worker running (or holding) the call ``task_id`` now, if one is."""
        call = self.calls.get(task_id)
        return call.worker_id if call is not None else None

    def next_wakeup(self) -> float | None:
        """When a :class:`.stimuli.Tick` is next needed (a deadline, a timeout or a retry), if ever;
        while workers hold calls sent ahead, every :data:`.ledger.LATE` seconds too, to see
        whether the call they wait behind runs late."""
        due = self.timers.next()
        if self.roster.ahead:
            return self._now + LATE if due is None else min(due, self._now + LATE)
        return due

    # -- stimuli ------------------------------------------------------------------------

    def handle(self, stimulus: st.Stimulus) -> list[st.Instruction]:
        """What to do about ``stimulus``, in order."""
        out: list[st.Instruction] = []
        now = self._now = stimulus.now
        quiet = False  # nothing can have changed for the queue
        match stimulus:
            case st.Submitted():
                quiet = self._submit(stimulus.call, now, out)
            case st.Answered():
                self._answered(stimulus.task_id, stimulus.attempt, stimulus.retry, stimulus.ran, now, out)
            case st.Lost():
                lost = self._current(stimulus.task_id, stimulus.attempt)
                if lost is not None:
                    self._lose(lost, now, stimulus.reason, out, started=stimulus.started)
            case st.CancelAsked():
                call = self.calls.get(stimulus.task_id)
                if call is not None:
                    self._end(call, out, st.Resolve(stimulus.task_id, st.Outcome.CANCELLED, call.attempt),
                              abort=st.AbortReason.CANCELLED)
            case st.WorkerUp():
                self.roster.up(stimulus)
            case st.WorkerGone():
                gone = self.roster.gone(stimulus.worker_id)
                for task_id in list(gone.running) if gone is not None else ():
                    if self._aborted.pop(task_id, None) is None:
                        self._lose(self.calls[task_id], now, stimulus.reason, out, started=True)
            case st.WorkerUnhealthy():
                self.roster.set_healthy(stimulus.worker_id, stimulus.healthy)
            case st.WorkerDraining():
                self.roster.drain(stimulus.worker_id)
            case st.Load():
                self.in_process_open = stimulus.low
            case st.ProjectLimit():
                self.projects.set_limit(stimulus.project, stimulus.limit)
            case st.Closing():
                self.closed = True
                for call in [c for c in self.calls.values() if c.worker_id is None]:
                    self._end(call, out, st.Resolve(call.spec.task_id, st.Outcome.CLOSED, call.attempt))
            case st.Tick():
                self._expire(now, out)
        if not quiet:
            self._settle(now, out)
        if self._moved:
            self._wake(out)
        return out

    # The two stimuli every call brings, taken without being built (the pool's hot
    # path): each returns exactly what handle() returns for the same stimulus.

    def submitted(self, now: float, call: st.CallSpec) -> list[st.Instruction]:
        """``handle(Submitted(now, call))``."""
        out: list[st.Instruction] = []
        self._now = now
        if not self._submit(call, now, out):
            self._settle(now, out)
        if self._moved:
            self._wake(out)
        return out

    def answered(self, now: float, task_id: int, attempt: int, retry: bool = False,
                 ran: float | None = None) -> list[st.Instruction]:
        """``handle(Answered(now, task_id, attempt, retry, ran))``."""
        out: list[st.Instruction] = []
        self._now = now
        self._answered(task_id, attempt, retry, ran, now, out)
        self._settle(now, out)
        if self._moved:
            self._wake(out)
        return out

    def _wake(self, out: list[st.Instruction]) -> None:
        self._moved = False
        at = self.next_wakeup()
        if at is not None:
            out.append(st.WakeAt(at))

    def _settle(self, now: float, out: list[st.Instruction]) -> None:
        """After a change: start what can start, stop what drained."""
        if self.queue.count and not self.closed:
            self._dispatch(now, out)
        if self.roster.draining:
            self._stop_drained(out)

    def _answered(self, task_id: int, attempt: int, retry: bool, ran: float | None, now: float,
                  out: list[st.Instruction]) -> None:
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
            out.append(st.Resolve(task_id, st.Outcome.ANSWERED, attempt))

    def _submit(self, spec: st.CallSpec, now: float, out: list[st.Instruction]) -> bool:
        """Take the call in; True when it only joined the back of a stalled queue."""
        if spec.task_id in self.calls:
            raise ValueError(f"task {spec.task_id} was submitted already")
        call = self.calls[spec.task_id] = CallRecord(spec, now, next(self._seq), spec.priority, spec.project)
        if self.closed:
            self._end(call, out, st.Resolve(spec.task_id, st.Outcome.CLOSED))
        elif spec.pinned_to is not None:  # in call order on its worker, which queues it
            worker = self.workers.get(spec.pinned_to)
            if worker is None:
                self._end(call, out, st.Resolve(spec.task_id, st.Outcome.LOST, 0, f"worker {spec.pinned_to} is gone"))
            else:
                self._send(call, worker, now, out)
        elif not self.queue.count and (spec.project is None or self.projects.has_room(spec.project)):
            worker = self._place(call)  # nothing waits: no need to queue it first
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
            return stalled and (self.queue.one_fifo or self.queue.peek(now, self.projects.eligible) is not call)
        return False

    def _wait(self, call: CallRecord, now: float) -> None:
        """Queue ``call`` (newly submitted)."""
        self.queue.push(call)
        call.waiting = True
        deadline = call.spec.deadline
        if deadline is not None:
            self.timers.deadline(now + deadline, call.spec.task_id)
            self._moved = True

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

    def _dispatch(self, now: float, out: list[st.Instruction]) -> None:
        queue = self.queue
        self._stalled = False
        placed: st.CallSpec | None = None
        eligible = self.projects.eligible
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

    def _send(self, call: CallRecord, worker: WorkerRecord, now: float, out: list[st.Instruction]) -> None:
        """Send ``call`` to ``worker``; unless pinned, it counts against its project until freed."""
        spec = call.spec
        task_id = spec.task_id
        attempt = call.attempt = call.attempt + 1
        call.tries += 1
        call.worker_id = worker.id
        call.started_at = now
        mean = self.durations.means.get(spec.label)
        if mean is None or mean >= SHORT:
            call.unsure = True
            worker.unsure += 1
        running = worker.running
        running[task_id] = None
        if len(running) > worker.width and self.roster.holds_ahead(worker):
            self._moved = True
        if worker.budget is not None:
            worker.budget -= 1
            worker.refresh()
        if spec.project is not None and spec.pinned_to is None:
            self.projects.started(spec.project)
        if spec.timeout is not None:
            self.timers.timeout(now + spec.timeout, task_id, attempt)
            self._moved = True
        out.append(st.Send(task_id, attempt, worker.id))

    def _place(self, call: CallRecord) -> WorkerRecord | None:
        """Where ``call`` goes now, if anywhere (:func:`.ledger.place`); :attr:`_spare`
        says whether a call like it would still find a place after it."""
        spec, durations = call.spec, self.durations
        label = spec.label
        worker, self._spare = place(spec, self.workers.values(), self.in_process_open, durations.means.get(label),
                                    durations.depth.get(label, 0))
        return worker

    def _measure(self, call: CallRecord, worker: WorkerRecord, now: float, ran: float | None) -> None:
        last = worker.last_done
        took = ran if ran is not None else now - (call.started_at if call.started_at > last else last)
        worker.last_done = now
        self.durations.measured(call.spec.label, took)

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
            self.projects.ended(call.project)
        call.worker_id = None

    def _lose(self, call: CallRecord, now: float, reason: str, out: list[st.Instruction], *, started: bool) -> None:
        worker_id = call.worker_id
        self._free(call, self.workers.get(worker_id) if worker_id is not None else None)
        task_id = call.spec.task_id
        if not started and call.spec.pinned_to is None:
            call.tries -= 1
            call.requeues += 1
            if call.requeues <= MAX_REQUEUES and not self.closed:
                self.queue.put_back(call)  # it never began: in its place again, at no cost to its retries
                call.waiting = True
                return
        if started:
            call.deaths += 1
        if call.deaths >= self.max_deaths and call.spec.retries:
            self._end(call, out, st.Resolve(task_id, st.Outcome.LOST, call.attempt,
                                         f"{reason}; given up after {call.deaths} workers died running it",
                                         worker_id, gave_up=True))
        elif call.tries <= call.spec.retries and started and not self.closed and call.spec.pinned_to is None:
            self._retry(call, now, out, reason)
        else:
            self._end(call, out, st.Resolve(task_id, st.Outcome.LOST, call.attempt, reason, worker_id))

    def _retry(self, call: CallRecord, now: float, out: list[st.Instruction], reason: str) -> None:
        at = now + self._jitter(backoff(call.tries))
        self.timers.retry(at, call.spec.task_id)
        self._moved = True
        self._retrying.add(call.spec.task_id)
        out.append(st.RetryAt(call.spec.task_id, at, call.attempt, reason))

    def _end(self, call: CallRecord, out: list[st.Instruction], resolve: st.Resolve, *,
             abort: st.AbortReason | None = None) -> None:
        """Resolve ``call``; a running attempt is stopped by force when ``abort`` says why."""
        task_id = call.spec.task_id
        if call.worker_id is not None:
            if abort:
                out.append(st.AbortAttempt(task_id, call.attempt, call.worker_id, abort))
                self._aborted[task_id] = (call.attempt, call.worker_id)
            self._free(call, self.workers.get(call.worker_id), keep_room=bool(abort))
        elif call.waiting:
            self.queue.discard(call)
        else:
            self._retrying.discard(task_id)
        del self.calls[task_id]
        out.append(resolve)

    def _expire(self, now: float, out: list[st.Instruction]) -> None:
        timers = self.timers
        for task_id, attempt in timers.timed_out(now):
            call = self.calls.get(task_id)
            if call is not None and call.attempt == attempt and call.worker_id is not None:
                self._end(call, out, st.Resolve(task_id, st.Outcome.TIMEOUT, attempt,
                                             f"ran past its timeout of {call.spec.timeout:g} s", call.worker_id),
                          abort=st.AbortReason.TIMEOUT)
        for task_id in timers.expired(now):
            waiting = self.calls.get(task_id)
            if waiting is not None and waiting.tries == 0 and waiting.worker_id is None:
                self._end(waiting, out, st.Resolve(task_id, st.Outcome.EXPIRED, waiting.attempt,
                                                f"waited past its deadline of {waiting.spec.deadline:g} s"))
        for task_id in timers.retries_due(now):
            due = self.calls.get(task_id)
            if due is not None and task_id in self._retrying:
                self._retrying.discard(task_id)
                due.queued_at = now
                self.queue.push(due)
                due.waiting = True
        if self.roster.ahead:
            for worker_id, held in self.roster.late(now, self.calls, self.durations.means):
                for task_id in held:
                    call = self.calls.get(task_id)  # None: given up, still ending; pinned: it must run there
                    if call is not None and call.spec.pinned_to is None:
                        out.append(st.TakeBack(task_id, call.attempt, worker_id))

    def _stop_drained(self, out: list[st.Instruction]) -> None:
        for worker_id in self.roster.drained():
            out.append(st.StopWorker(worker_id, "drained"))
