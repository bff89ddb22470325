"""What the pool shows its readers: one immutable snapshot, taken on the event loop's
thread in one go, so that ``get_stats``, ``/metrics``, the dashboard and ``kernel
status`` see one consistent moment and never reach into the scheduler or the fleet."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..executors import Attempt, WorkerInfo
from ..scheduling import ScalingDecision

if TYPE_CHECKING:
    from ..scheduling import Scheduler
    from .fleet import Fleet
    from .scaling import Scaling
    from .tally import Tally


@dataclass(frozen=True, slots=True)
class CallReport:
    """A call a worker holds now."""

    label: str
    task_id: int
    attempt: int
    started: float | None  # time.perf_counter() when it began, if it has
    timeout: float | None
    progress: float | None
    message: str | None

    @classmethod
    def of(cls, attempt: Attempt) -> CallReport:
        fraction, message = attempt.progress or (None, "")
        return cls(attempt.label, attempt.id, attempt.attempt, attempt.started or None, attempt.timeout, fraction,
                   message or None)


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker of the pool (the in-process one shows in ``in_process_running`` only)."""

    id: str
    node_type: str
    state: str  # its WorkerState's value, or "draining" while the pool retires it
    running: int
    pinned: int
    done: int
    failed: int
    info: WorkerInfo
    calls: tuple[CallReport, ...]
    restarts: int = 0  # times restarted on request


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The pool at one moment (see the module docstring)."""

    workers: tuple[WorkerReport, ...]
    starting: int  # workers being started
    queued: int  # calls admitted and not started: in the queue or waiting for a retry (at most maxQueue)
    held: int  # calls held at the door by back-pressure (maxQueue), not admitted yet
    in_process_running: int  # calls on the in-process worker
    queued_by_priority: Mapping[int, int]
    queued_by_project: Mapping[str, int]
    project_running: Mapping[str, int]
    project_limits: Mapping[str, int]
    min_workers: int
    max_workers: int
    last_scaling: str
    last_decision: ScalingDecision | None
    done: int
    failed: int
    attempts_failed: int
    retried: int
    placements: tuple[Mapping[str, object], ...]


def take(fleet: Fleet, scaling: Scaling, sched: Scheduler, tally: Tally, held: int,
         placements: Iterable[Mapping[str, object]]) -> PoolSnapshot:
    """A pool now, from its parts (on its event loop's thread, in one go)."""
    workers = tuple(
        WorkerReport(
            w.id, w.backend.node_type,
            "draining" if w.retiring and w.backend.is_available else w.backend.state.value,
            w.running, w.pinned, w.backend.done, w.backend.failed, w.backend.info(),
            tuple(CallReport.of(call) for call in w.backend.inflight.values()), fleet.restarts.get(w.id, 0),
        )
        for w in fleet.members
    )
    return PoolSnapshot(
        workers, fleet.starting, sched.queued, held, fleet.in_process.running if fleet.in_process else 0,
        sched.queue.by_priority(), sched.queue.by_project(), dict(sched.projects.running),
        dict(sched.projects.limits), fleet.limits.min_workers, fleet.limits.max_workers, scaling.last_scaling,
        scaling.last_decision, tally.done, tally.failed, tally.attempts_failed, tally.retried,
        tuple(placements),
    )
