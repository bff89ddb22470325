"""The scheduler's workers: their records, which of them drain, and which hold calls
sent ahead.

Sending ahead is the scheduler's one exception to "a call sent has started", taken
where it cannot break a promise: a call of a function measured short (under
:data:`.ledger.SHORT` seconds, no timeout) may be sent to a busy worker that runs only
such calls, a few milliseconds of work ahead (:func:`.ledger.ahead`), so tiny calls do
not pay a round trip each. A call sent ahead is the best in the queue when it is sent,
and it waits behind at most :data:`.ledger.BUDGET` seconds of measured work. When the
call it waits behind runs late after all (:func:`.ledger.late_after`), the calls held
behind it are taken back (:class:`.stimuli.TakeBack`, see :meth:`Roster.late`) and go
to the queue again, to run elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .ledger import LATE, CallRecord, WorkerRecord, late_after
from .stimuli import WorkerUp


class Roster:
    """The workers one scheduler places calls on, by worker id."""

    __slots__ = ("ahead", "draining", "records")

    def __init__(self) -> None:
        self.records: dict[str, WorkerRecord] = {}
        self.draining: set[str] = set()  # told to drain: stopped once they run nothing
        self.ahead: set[str] = set()  # holding calls sent ahead (more than their width)

    def __repr__(self) -> str:
        return f"<Roster workers={len(self.records)} draining={len(self.draining)} ahead={len(self.ahead)}>"

    @property
    def running(self) -> int:
        """Calls running (or held) on every worker."""
        return sum(len(w.running) for w in self.records.values())

    def up(self, up: WorkerUp) -> None:
        """A worker joined, or was announced again (a node that reconnected: what it
        runs stays)."""
        known = self.records.get(up.worker_id)
        if known is None:
            self.records[up.worker_id] = WorkerRecord(up.worker_id, max(1, up.width), dict(up.resources), up.in_process,
                                                      up.overhead, last_done=up.now, budget=up.calls)
        else:
            known.width, known.resources, known.healthy = max(1, up.width), dict(up.resources), True
            known.overhead = up.overhead
            known.refresh()

    def gone(self, worker_id: str) -> WorkerRecord | None:
        """Forget a worker that is gone; its record, if it was known."""
        self.draining.discard(worker_id)
        self.ahead.discard(worker_id)
        return self.records.pop(worker_id, None)

    def set_healthy(self, worker_id: str, healthy: bool) -> None:
        worker = self.records.get(worker_id)
        if worker is not None:
            worker.healthy = healthy
            worker.refresh()

    def drain(self, worker_id: str) -> None:
        """The worker takes no new call, and is let go once it runs nothing."""
        worker = self.records.get(worker_id)
        if worker is not None:
            worker.draining = True
            worker.refresh()
            self.draining.add(worker_id)

    def drained(self) -> list[str]:
        """The draining workers that run nothing more, forgotten."""
        done = [w for w in self.draining if not self.records[w].running]
        for worker_id in done:
            del self.records[worker_id]
            self.draining.discard(worker_id)
        return done

    def holds_ahead(self, worker: WorkerRecord) -> bool:
        """``worker`` was sent more calls than it runs at once; True when it has just come
        to hold calls ahead (from now on :meth:`late` must be asked every
        :data:`.ledger.LATE` seconds)."""
        if worker.id in self.ahead:
            return False
        self.ahead.add(worker.id)
        return True

    def late(self, now: float, calls: Mapping[int, CallRecord],
             means: Mapping[str, float]) -> Iterator[tuple[str, list[int]]]:
        """Each worker whose first running call runs late by ``now`` (by its label's
        measured mean, in ``means``), with the task ids held behind it. The worker is
        marked late: until that call ends, nothing more goes ahead to it."""
        for worker_id in list(self.ahead):
            worker = self.records.get(worker_id)
            if worker is None or len(worker.running) <= worker.width:
                self.ahead.discard(worker_id)
                continue
            if worker.late is not None or now < _late_at(worker, calls, means):
                continue
            worker.late = next(iter(worker.running))
            yield worker_id, list(worker.running)[worker.width:]


def _late_at(worker: WorkerRecord, calls: Mapping[int, CallRecord], means: Mapping[str, float]) -> float:
    """When the call running first on ``worker`` counts as late."""
    call = calls.get(next(iter(worker.running)))  # None: an attempt given up, still ending
    if call is None:
        return worker.last_done + LATE
    return max(call.started_at, worker.last_done) + late_after(means.get(call.spec.label))
