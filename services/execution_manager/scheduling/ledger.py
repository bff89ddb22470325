"""The scheduler's records (a call, a worker) and the rules it places by: pure values and
functions of measured durations, for :mod:`.scheduler`."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from .resources import fits, tightness
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
    enough to cover :data:`BUDGET` (or the worker's transit ``overhead``)."""
    return min(MAX_AHEAD, 1 + math.ceil(max(BUDGET, overhead) / max(mean, 1e-6)))


def backoff(attempt: int, base: float = 0.1, cap: float = 30.0) -> float:
    """Seconds before attempt ``attempt + 1``: exponential from ``base``, capped."""
    return min(cap, base * 2.0 ** max(0, attempt - 1))


class Durations:
    """Measured seconds per call of each function (by label), an average that follows
    change, and how many calls of it one thread may hold ahead (0: none, not short)."""

    __slots__ = ("depth", "means")

    def __init__(self) -> None:
        self.means: dict[str, float] = {}
        self.depth: dict[str, int] = {}

    def measured(self, label: str, took: float) -> None:
        """A call of ``label`` took ``took`` seconds."""
        old = self.means.get(label)
        mean = self.means[label] = took if old is None else old * 0.8 + took * 0.2
        self.depth[label] = ahead(mean) if mean < SHORT else 0


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
    in_process: bool = False
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


def place(spec: CallSpec, workers: Collection[WorkerRecord], in_process_open: bool, mean: float | None,
          depth: int) -> tuple[WorkerRecord | None, bool]:
    """Where a call of ``spec`` goes now, if anywhere, and whether a call like it would
    still find a place after it. ``in_process_open``: the kernel's own process may take
    calls that opted in; ``mean``: the function's measured seconds per call (None:
    unknown); ``depth``: how many calls per thread it may be sent ahead (0: none).

    A call that names resources goes to the worker with room where it fits most tightly
    (bin packing). Else to the open worker with the fewest running, its id breaking ties;
    with none free, ahead to a worker that runs only short calls and none of them late.
    (Asked for every call: kept lean.)
    """
    need = spec.resources
    if need:
        free = [w for w in workers if w.has_room and not w.in_process and fits(w.resources, need)]
        return min(free, key=lambda w: (len(w.running), -tightness(w.resources, need), w.id), default=None), True
    if spec.timeout is not None:
        depth = 0  # never sent ahead: its timeout counts from its start
    best: WorkerRecord | None = None
    fewest = 0  # running on best
    idle = 0  # threads free, over every worker
    for w in workers:
        n = len(w.running)
        if n < w.width and w.open:
            if w.in_process:
                if in_process_open and spec.in_process and spec.timeout is None:
                    return w, True  # opted in, and the machine is idle
            else:
                idle += w.width - n
                if best is None or n < fewest or (n == fewest and w.id < best.id):
                    best, fewest = w, n
    if best is not None:
        return best, idle > 1 or depth > 0  # else the next call like it needs no look
    if not depth or mean is None:
        return None, True
    room = 0  # places left for calls like this one, over every worker
    for w in workers:  # send ahead, behind short calls only
        if w.in_process or w.unsure or w.late is not None or not w.open:
            continue
        n = len(w.running)
        left = w.width * (ahead(mean, w.overhead) if w.overhead else depth) - n
        if left > 0:
            room += left
            if best is None or n < fewest or (n == fewest and w.id < best.id):
                best, fewest = w, n
    return best, room > 1
