"""What the pool shows its readers: one immutable snapshot, taken on the event loop's
thread in one go, so that ``get_stats``, ``/metrics``, the dashboard and ``kernel
status`` see one consistent moment and never reach into the scheduler or the fleet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..executors import Attempt, WorkerInfo
from ..scheduling import ScalingDecision


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
    def of(cls, call: Attempt) -> CallReport:
        fraction, message = call.progress or (None, "")
        return cls(call.label, call.id, call.attempt, call.started or None, call.timeout, fraction, message or None)


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker of the pool (the in-process one shows in ``local_running`` only)."""

    id: str
    node_type: str
    state: str  # its WorkerState's value, or "draining" while the pool retires it
    running: int
    pinned: int
    done: int
    failed: int
    info: WorkerInfo
    calls: tuple[CallReport, ...]


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The pool at one moment (see the module docstring)."""

    workers: tuple[WorkerReport, ...]
    starting: int  # workers being started
    waiting: int  # calls queued or held at the door
    local_running: int  # calls on the in-process worker
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

    def worker(self, worker_id: str) -> WorkerReport | None:
        return next((w for w in self.workers if w.id == worker_id), None)
