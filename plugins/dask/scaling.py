"""When to grow or shrink a Dask cluster the kernel started: a pure function of a
snapshot, tested as a table (like the pool's own scaling policy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class WorkerView(NamedTuple):
    name: str  # the Dask worker's name (what LocalCluster.scale_down takes)
    running: int  # calls of ours on it now
    slots: int  # its threads
    idle_since: float | None  # monotonic time it last became idle; None while busy


class Decision(NamedTuple):
    target: int  # workers wanted
    retire: tuple[str, ...]  # names to close (idle ones)
    reason: str


def plan(workers: Sequence[WorkerView], waiting: int, starting: int, low: int, high: int, now: float,
         idle_timeout: float, busy_threshold: float = 0.8) -> Decision:
    """One step per look, as the pool scales: a worker more when calls wait and the
    cluster is busy (and below ``high``); an idle worker less once it has been idle
    ``idle_timeout`` seconds and nothing waits (and above ``low``); else as it is."""
    have = len(workers) + starting
    slots = sum(w.slots for w in workers)
    busy = sum(w.running for w in workers) / slots if slots else 1.0
    if have < low:
        return Decision(low, (), f"below the minimum of {low} workers")
    if waiting and busy >= busy_threshold and have < high and not starting:
        return Decision(have + 1, (), f"{waiting} calls wait and the cluster is {busy:.0%} busy")
    if not waiting and have > low and not starting:
        idle = sorted((w for w in workers if w.running == 0 and w.idle_since is not None
                       and now - w.idle_since >= idle_timeout), key=lambda w: w.idle_since or 0.0)
        if idle:
            return Decision(have - 1, (idle[0].name,), f"{idle[0].name} idle for {idle_timeout:g} s or more")
    return Decision(have, (), "")
