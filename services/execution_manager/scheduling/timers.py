"""When the scheduler must look again: queue deadlines, retries and attempt timeouts."""

from __future__ import annotations

import heapq
from collections.abc import Iterator


class Timers:
    """Three heaps of due times, kept lazily: an entry may be stale (its call ended, or
    another attempt runs now), so whoever takes one checks it against the records."""

    __slots__ = ("deadlines", "retries", "timeouts")

    def __init__(self) -> None:
        self.deadlines: list[tuple[float, int]] = []  # (when, task id): a queued call's wait ends
        self.retries: list[tuple[float, int]] = []  # (when, task id): a retry is due
        self.timeouts: list[tuple[float, int, int]] = []  # (when, task id, attempt): a running attempt's

    def __repr__(self) -> str:
        return (f"<Timers deadlines={len(self.deadlines)} retries={len(self.retries)} "
                f"timeouts={len(self.timeouts)} next={self.next()}>")

    def __bool__(self) -> bool:
        return bool(self.deadlines or self.retries or self.timeouts)

    def deadline(self, at: float, task_id: int) -> None:
        heapq.heappush(self.deadlines, (at, task_id))

    def retry(self, at: float, task_id: int) -> None:
        heapq.heappush(self.retries, (at, task_id))

    def timeout(self, at: float, task_id: int, attempt: int) -> None:
        heapq.heappush(self.timeouts, (at, task_id, attempt))

    def next(self) -> float | None:
        """The earliest time due, if any."""
        heads = [heap[0][0] for heap in (self.deadlines, self.retries, self.timeouts) if heap]
        return min(heads) if heads else None

    def timed_out(self, now: float) -> Iterator[tuple[int, int]]:
        """(task id, attempt) of each timeout due by ``now``, taken off."""
        timeouts = self.timeouts
        while timeouts and timeouts[0][0] <= now:
            _, task_id, attempt = heapq.heappop(timeouts)
            yield task_id, attempt

    def expired(self, now: float) -> Iterator[int]:
        """Task ids whose queue deadline is due by ``now``, taken off."""
        while self.deadlines and self.deadlines[0][0] <= now:
            yield heapq.heappop(self.deadlines)[1]

    def retries_due(self, now: float) -> Iterator[int]:
        """Task ids whose retry is due by ``now``, taken off."""
        while self.retries and self.retries[0][0] <= now:
            yield heapq.heappop(self.retries)[1]
