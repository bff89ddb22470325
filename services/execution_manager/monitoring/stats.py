"""What ``await em.get_stats()`` returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..executors import NodeInfo
from ..scheduling import ScalingDecision


class SystemLoad(BaseModel):
    cpu_percent: float
    memory_percent: float
    avg_load: float  # 1-minute load average / CPUs, capped at 1


class RunningCall(BaseModel):
    call: str  # its label, e.g. "PrimeCounter.count_range"
    task_id: int | None = None  # the call's id, the same in every attempt, log line and error
    attempt: int = 1
    elapsed: float  # seconds since it started on the worker
    timeout: float | None  # the caller's limit for the whole call
    progress: float | None  # the latest fraction it reported (kernel.task.progress)
    message: str | None


class WorkerStats(BaseModel):
    id: str
    node_type: str
    state: str
    pid: int | None
    address: str | None
    running: int
    done: int
    failed: int
    cpu_percent: float
    memory_rss: int
    pinned: int
    node: str | None = None  # the remote node it runs on
    host: str | None = None  # the machine it runs on
    heartbeat_age: float | None = None  # node slots: seconds since the node was last heard
    calls: list[RunningCall] = []  # what it runs now
    restarts: int = 0  # times restarted on request (under the same id)


class ProjectStats(BaseModel):
    running: int
    queued: int
    limit: int | None


class Stats(BaseModel):
    workers: int
    min_workers: int
    max_workers: int
    starting: int
    system_load: SystemLoad
    active_tasks: int
    queued_tasks: int  # admitted and not started (in the queue, or waiting for a retry): at most maxQueue
    held_tasks: int = 0  # held at the door by back-pressure (maxQueue), not admitted yet
    queued_by_priority: dict[int, int]  # priority -> calls waiting, highest first
    projects: dict[str, ProjectStats]
    in_process_tasks: int
    tasks_done: int  # calls that succeeded
    tasks_failed: int  # calls that failed, each once however many attempts it took
    attempts_failed: int = 0  # attempts that ended in error (a retried call's too)
    tasks_retried: int = 0  # attempts started again after one failed
    pinned_instances: int
    last_scaling: str
    scaling: ScalingDecision | None = None  # the last decision as fields
    recent_placements: list[dict[str, Any]]  # resource-aware choices: call, worker, each fitting worker's fit
    worker_details: list[WorkerStats]
    nodes: list[NodeInfo] = []  # each remote node: address, state, slots, load, heartbeat age
    nodes_address: str | None = None  # where nodes connect, when listening
    node_refusals: dict[str, int] = {}  # refused node connections by reason
    nodes_problem: str | None = None  # what keeps the node listener from serving now
    soft_memory_limit: int | None = None  # bytes of RSS (softMemoryLimit)
    hard_memory_limit: int | None = None
