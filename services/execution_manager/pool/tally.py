"""What the pool counts and tells of its calls: the counters ``get_stats`` and
``/metrics`` show, the duration and wait histograms, the task events, and the log line
and notes of a call that failed. It decides nothing; the pool reports to it."""

from __future__ import annotations

import bisect
import time
from typing import Any

import structlog

from ..events import EventBus
from ..executors import Attempt
from ..wire.serialization import format_exception, type_name
from .handles import CallFuture, FailedAttempt

log = structlog.get_logger("execution-manager")


# Two ``bisect`` calls and two increments per call: cheaper on the hot path than a locked
# metrics object; /metrics exports them as Prometheus histograms at scrape time.
# Seconds; Prometheus' default buckets reach down to 5 ms, calls here are often faster.
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
          10.0, 30.0, 60.0, 300.0)


class Buckets:
    """A cumulative-at-export histogram: counts per bucket and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """``(upper bound, count at or below it)`` pairs, ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip((*map(str, BOUNDS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class Timings:
    """Call durations (service time on the worker) and queue waits."""

    __slots__ = ("duration", "wait")

    def __init__(self) -> None:
        self.duration = Buckets()
        self.wait = Buckets()


class Tally:
    """The counts and reports of one pool's calls."""

    __slots__ = ("attempts_failed", "done", "events", "failed", "retried", "timings")

    def __init__(self, events: EventBus, timings: Timings | None = None) -> None:
        self.events = events
        self.timings = timings  # call durations and queue waits, when someone reads them
        self.done = 0  # calls that succeeded
        self.failed = 0  # calls that failed, however many attempts each took
        self.attempts_failed = 0  # attempts that ended in error, retried or not
        self.retried = 0

    def __repr__(self) -> str:
        return (f"<Tally done={self.done} failed={self.failed} attempts_failed={self.attempts_failed} "
                f"retried={self.retried}>")

    def waited(self, seconds: float) -> None:
        if self.timings is not None:
            self.timings.wait.observe(max(0.0, seconds))

    def ran(self, worker_id: str, attempt: Attempt, ok: bool) -> None:
        """An attempt answered (``ok``: with its result, else with its error)."""
        took = attempt.ran if attempt.ran is not None else time.perf_counter() - attempt.started
        if self.timings is not None:
            self.timings.duration.observe(took)
        events = self.events
        if events.wants("task-complete" if ok else "attempt-failed"):
            events.emit("task-complete" if ok else "attempt-failed", worker_id=worker_id, task_id=attempt.id,
                        call=attempt.label, seconds=took)

    def attempt_failed(self, fut: CallFuture | None, attempt: Attempt, exc: BaseException, *, note: bool) -> None:
        """An attempt ended in ``exc``; with ``note``, the call's future keeps it among its
        attempts (one retried, or one that began on a worker that died)."""
        self.attempts_failed += 1
        if note and fut is not None:
            fut.attempts.append(FailedAttempt(attempt.attempt, attempt.worker_id, f"{type(exc).__name__}: {exc}"))

    def retrying(self, fut: CallFuture, attempt: int, reason: str) -> None:
        self.retried += 1
        self.events.emit("task-retried", call=fut.label, task_id=fut.task_id, attempt=attempt,
                         worker_id=fut.attempts[-1].worker_id if fut.attempts else None, reason=reason, **_job(fut))

    def fail(self, fut: CallFuture, exc: BaseException) -> None:
        """Fail ``fut`` with ``exc``: counted, logged, its attempts noted on the error."""
        self.failed += 1
        log.info("call failed", **{**fut.bound(), "task_id": fut.task_id, "call": fut.label,
                                   "attempts": len(fut.attempts) or 1, "error": f"{type_name(exc)}: {exc}"})
        if len(fut.attempts) > 1:
            exc.add_note("attempts:\n" + "\n".join(
                f"  {a.number}. on {a.worker_id or '?'}: {a.outcome}" for a in fut.attempts))
        events = self.events
        if events.wants("task-failed"):
            events.emit("task-failed", call=fut.label, task_id=fut.task_id,
                        worker_id=fut.current.worker_id if fut.current else None, attempts=len(fut.attempts),
                        error=f"{type_name(exc)}: {exc}",
                        traceback=getattr(exc, "remote_traceback", None) or format_exception(exc), **_job(fut))
        fut.set_exception(exc)


def _job(fut: CallFuture) -> dict[str, Any]:
    """The job a call runs for (its caller bound ``job_id``), for its events."""
    job_id = fut.bound().get("job_id")
    return {"job_id": job_id} if job_id is not None else {}
