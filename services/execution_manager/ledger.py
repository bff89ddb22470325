"""The scheduler's records (a call, a worker) and the rules it places by: pure values and
functions of measured durations, for :mod:`.scheduler`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .stimuli import CallSpec

SHORT = 0.005  # seconds: a function measured under this may be sent ahead
BUDGET = 0.002  # seconds of measured work a call sent ahead may wait behind
MAX_AHEAD = 64  # calls per thread of a worker, at most
MAX_REQUEUES = 10  # attempts that never began, before a call is given up
LATE = 0.02  # seconds: a call measured short that runs this long has calls taken back from behind it


def late_after(mean: float | None) -> float:
    """Seconds after which a call measured at ``mean`` s counts as running late."""
    return max(LATE, 4 * (mean or 0.0))


def ahead(mean: float, overhead: float = 0.0) -> int:
    """Calls one thread of a worker may hold for a function measured at ``mean`` s:
    enough to cover :data:`BUDGET` (or the executor's transit ``overhead``)."""
    return min(MAX_AHEAD, 1 + math.ceil(max(BUDGET, overhead) / max(mean, 1e-6)))


def backoff(attempt: int, base: float = 0.1, cap: float = 30.0) -> float:
    """Seconds before attempt ``attempt + 1``: exponential from ``base``, capped."""
    return min(cap, base * 2.0 ** max(0, attempt - 1))


@dataclass(slots=True, eq=False)
class CallRecord:
    """The scheduler's record of one call: where it is, and its attempts so far."""

    spec: CallSpec
    queued_at: float
    seq: int
    priority: int  # the spec's, copied: the queue reads them on every call
    project: str | None
    waiting: bool = False  # in the queue
    attempt: int = 0  # attempts sent
    tries: int = 0  # attempts that may have started
    worker_id: str | None = None  # where its current attempt runs
    started_at: float = 0.0
    deaths: int = 0
    requeues: int = 0
    unsure: bool = False  # sent while not known to be short


@dataclass(slots=True, eq=False)
class WorkerRecord:
    """The scheduler's record of one worker: what it runs, and whether it takes more."""

    id: str
    width: int
    resources: Mapping[str, float]
    local: bool = False
    overhead: float = 0.0
    running: dict[int, None] = field(default_factory=dict)  # task ids, in the order sent (a set, ordered)
    healthy: bool = True
    draining: bool = False
    unsure: int = 0  # running calls not known to be short: nothing is sent ahead of them
    last_done: float = 0.0
    budget: int | None = None  # calls it may still be sent (None: any)
    late: int | None = None  # the task it runs late: calls held behind it are taken back, none sent ahead
    open: bool = True  # takes new calls (kept by refresh(): it is read for every placement)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute :attr:`open` after ``healthy``, ``draining`` or ``budget`` changed."""
        self.open = self.healthy and not self.draining and self.budget != 0

    @property
    def has_room(self) -> bool:
        return self.open and len(self.running) < self.width
