"""The execution manager's ``custom`` settings (camelCase in config.json)."""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kernel.manifest import refuse_renamed

from .scheduling import Limits

ADMIN_TOKEN_FILE = "admin.token"  # in the kernel's data folder, when neither a file nor the env gives it
ADMIN_TOKEN_ENV = "MICROKERNEL_ADMIN_TOKEN"  # custom.http.adminTokenEnv's default


def default_max_workers() -> int:
    """CPUs - 1, at least 1: one core stays for the kernel and the system."""
    return max(1, (os.cpu_count() or 2) - 1)


class HttpSettings(BaseModel):
    """``custom.http``: the dashboard, JSON API and ``/metrics`` (README "Seeing it work")."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    host: str = Field("127.0.0.1", description="address to serve on; 0.0.0.0 exposes it to the network")
    port: int = Field(8790, ge=0, le=65535, description="0: any free port")
    control: bool = Field(True, description="false: the API is read-only (no drain, stop, restart, scale)")
    admin_token_env: str = Field(ADMIN_TOKEN_ENV, description="environment variable with the admin token")
    admin_token_file: str | None = Field(None, description="file with the admin token (chmod 600); wins over the env; "
                                         "with neither, admin.token in the data folder, made on first start")
    push_interval: float = Field(1.0, gt=0, description="seconds between live updates to open dashboards")
    client_timeout: float = Field(5.0, gt=0, le=3600,
                                  description="seconds a connection may sit idle or take over a request's headers")
    max_connections: int = Field(256, ge=1, description="connections open at once; past it, 503")


class Settings(BaseModel):
    """Every knob of the execution manager; see README "Execution manager settings"."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )

    node_type: str = Field("local", description="executor plugin for the pool's workers")
    min_workers: int = Field(1, ge=0, description="workers kept alive even when idle")
    max_workers: int = Field(
        default_factory=default_max_workers, ge=0,
        description="null or absent: CPUs - 1; 0: no local workers, only remote nodes (custom.nodes)",
    )
    in_process: bool = Field(
        False, description="opt in: run calls without a timeout in the kernel's own process while it is idle"
    )
    in_process_threshold: float = Field(0.3, ge=0, le=1,
                                        description="CPU load below which calls may run in the kernel's process")
    in_process_threads: int = Field(1, ge=1, description="calls run in the kernel's process at once (threads)")
    scale_up_threshold: float = Field(0.8, ge=0, le=1)
    scale_down_threshold: float = Field(0.3, ge=0, le=1)
    memory_limit: float = Field(0.9, gt=0, le=1, description="no scale-up above this memory use")
    monitor_interval: float = Field(5.0, gt=0, description="seconds between scaling decisions")
    scale_cooldown: float = Field(10.0, ge=0, description="seconds after a scale-up before any worker retires")
    sample_interval: float = Field(1.0, gt=0, description="seconds between psutil samples")
    idle_timeout: float = Field(60.0, ge=0, description="seconds idle before a worker may retire (CPU under "
                                "scaleDownThreshold)")
    max_idle: float = Field(600.0, ge=0, description="seconds an idle worker is kept at most, however busy the CPU")
    max_tasks_per_worker: int | None = Field(None, ge=1, description="replace a worker after this many calls")
    soft_memory_limit: int | None = Field(None, ge=1, description="replace a worker above this RSS (bytes)")
    hard_memory_limit: int | None = Field(
        None, ge=1, description="stop the running call of a worker above this RSS (bytes)"
    )
    max_call_deaths: int = Field(3, ge=1, description="workers a retried call may kill before it is given up")
    start_timeout: float = Field(30.0, gt=0, description="seconds for a worker to register")
    heartbeat_timeout: float = Field(
        5.0, gt=0, description="seconds a worker may be stopped, or silent while idle, before it is declared "
        "dead and replaced (checked every sampleInterval, from outside the worker)"
    )
    drain_timeout: float = Field(10.0, gt=0, description="seconds running calls get to finish at stop")
    drain_queue: bool = Field(False, description="at stop, run the queued calls first (else cancel them)")
    max_queue: int | None = Field(None, ge=1, description="calls that may wait; past it submit waits or fails")
    aging_seconds: float = Field(
        10.0, ge=0, description="a waiting call gains one priority level per this many seconds (0: no aging)"
    )
    project_limits: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="at most this many calls of each project run at once"
    )
    executor_options: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, Any] | None = Field(
        None, description="listen for remote nodes: the transport's settings (README \"Remote nodes\"); null: off"
    )
    http: HttpSettings | None = Field(
        None, description="serve the dashboard, JSON API and /metrics (kernel run turns it on); null: off"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_max(cls, data: Any) -> Any:
        refuse_renamed(data, {"runLocally": "inProcess", "localThreshold": "inProcessThreshold",
                              "localSlots": "inProcessThreads"})
        if isinstance(data, dict) and data.get("maxWorkers", 0) is None:
            data = {**data, "maxWorkers": default_max_workers()}
        if isinstance(data, dict) and data.get("maxWorkers", data.get("max_workers")) == 0 \
                and "minWorkers" not in data and "min_workers" not in data:
            data = {**data, "minWorkers": 0}  # maxWorkers 0 alone: a pure coordinator
        return data

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"minWorkers ({self.min_workers}) is above maxWorkers ({self.max_workers})"
            )
        if self.max_workers == 0 and self.nodes is None:
            raise ValueError("maxWorkers 0 leaves no worker at all: raise it, or let remote nodes in (custom.nodes)")
        soft, hard = self.soft_memory_limit, self.hard_memory_limit
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError(f"softMemoryLimit ({soft}) must be below hardMemoryLimit ({hard})")
        if self.max_idle < self.idle_timeout:
            raise ValueError(f"maxIdle ({self.max_idle:g}) must not be below idleTimeout ({self.idle_timeout:g})")
        if self.scale_down_threshold >= self.scale_up_threshold:
            raise ValueError(
                f"scaleDownThreshold ({self.scale_down_threshold}) must be below "
                f"scaleUpThreshold ({self.scale_up_threshold})"
            )
        return self

    def limits(self, *, in_process: bool) -> Limits:
        """The autoscaler's bounds and thresholds (``in_process``: an in-process worker exists)."""
        return Limits(self.min_workers, self.max_workers, self.in_process and in_process, self.in_process_threshold,
                      self.scale_up_threshold, self.scale_down_threshold, self.memory_limit, self.idle_timeout,
                      self.scale_cooldown, self.max_idle)
