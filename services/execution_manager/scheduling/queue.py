"""Calls waiting for a worker: priorities 0-10 with aging, and per-project limits.

Calls wait in one FIFO per (priority, project). The next call to run is chosen by
:func:`pick_next` from the heads of those FIFOs: highest effective priority
(its priority plus one level per ``aging`` seconds waited), the oldest first among
equals, skipping projects at their limit, so a busy project never starves the others
and a low priority never waits forever behind a stream of high ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

MAX_PRIORITY = 10


def pick_next(heads: Sequence[tuple[int, float]], now: float, aging: float) -> int:
    """Index of the waiting call to run next, from ``(priority, queued_at)`` heads.

    Effective priority is ``priority + waited / aging`` (capped at 10), so every call
    eventually reaches the top; among equals the oldest goes first (FIFO).
    """
    best = 0
    best_key: tuple[float, float] | None = None
    for i, (priority, queued_at) in enumerate(heads):
        effective = min(MAX_PRIORITY, priority + (now - queued_at) / aging) if aging > 0 else priority
        key = (-effective, queued_at)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best



Key = tuple[int, str | None]


class Queued(Protocol):
    """What the queue reads of a waiting call."""

    @property
    def priority(self) -> int: ...
    @property
    def project(self) -> str | None: ...
    @property
    def queued_at(self) -> float: ...
    @property
    def seq(self) -> int: ...  # submission order, to break ties of queued_at


Item = TypeVar("Item", bound=Queued)


class CallQueue(Generic[Item]):
    """The calls waiting for a worker. ``len()`` is how many."""

    def __init__(self, aging: float) -> None:
        self.aging = aging
        self._fifos: dict[Key, deque[Item]] = {}
        self.count = 0  # how many wait (an attribute: read on every call, cheaper than len())

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[Item]:
        for fifo in list(self._fifos.values()):
            yield from list(fifo)

    def push(self, call: Item) -> None:
        key = (call.priority, call.project)
        fifo = self._fifos.get(key)
        if fifo is None:
            fifo = self._fifos[key] = deque()
        fifo.append(call)
        self.count += 1

    def put_back(self, call: Item) -> None:
        """Return ``call`` to its place (by when it was first queued): it was taken out
        but never began."""
        key = (call.priority, call.project)
        fifo = self._fifos.get(key)
        if fifo is None:
            fifo = self._fifos[key] = deque()
        mark = (call.queued_at, call.seq)
        index = next((i for i, other in enumerate(fifo) if (other.queued_at, other.seq) > mark), len(fifo))
        fifo.insert(index, call)
        self.count += 1

    @property
    def one_fifo(self) -> bool:
        """Whether every waiting call has one priority and project (a new one goes last)."""
        return len(self._fifos) == 1

    def peek(self, now: float, eligible: Callable[[str | None], bool] | None = None) -> Item | None:
        """The call to run next, or None when every waiting call's project is full
        (``eligible``: whether a project may start one more; None: all may)."""
        fifos = self._fifos
        if len(fifos) == 1:  # the common case: one priority, no projects
            ((key, fifo),) = fifos.items()
            return fifo[0] if fifo and (eligible is None or eligible(key[1])) else None
        keys = [k for k, fifo in fifos.items() if fifo and (eligible is None or eligible(k[1]))]
        if not keys:
            return None
        heads = [(k[0], fifos[k][0].queued_at) for k in keys]
        return fifos[keys[pick_next(heads, now, self.aging)]][0]

    def discard(self, call: Item) -> bool:
        """Remove ``call``; False if it was not waiting."""
        key = (call.priority, call.project)
        fifo = self._fifos.get(key)
        if fifo is None:
            return False
        if fifo and fifo[0] is call:
            fifo.popleft()
        else:
            try:
                fifo.remove(call)
            except ValueError:
                return False
        self.count -= 1  # an emptied FIFO stays: it is refilled soon, and there are few
        return True

    def by_priority(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for (priority, _), fifo in self._fifos.items():
            if fifo:
                counts[priority] = counts.get(priority, 0) + len(fifo)
        return dict(sorted(counts.items(), reverse=True))

    def by_project(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (_, project), fifo in self._fifos.items():
            if project is not None and fifo:
                counts[project] = counts.get(project, 0) + len(fifo)
        return counts
