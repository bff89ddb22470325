"""The Dask plugin's settings: the execution manager's ``custom.nodes`` with
``"transport": "dask"`` (README "From one machine to a cluster")."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

_CONFIG = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class LocalClusterSettings(BaseModel):
    """Start a Dask ``LocalCluster`` in the kernel (demos, tests, one big machine)."""

    model_config = _CONFIG

    workers: int = Field(2, ge=1, description="Dask worker processes to start")
    threads_per_worker: int = Field(1, ge=1, description="threads in each")
    processes: bool = Field(True, description="worker processes (False: threads of the kernel's process)")
    memory_limit: str | int = Field("auto", description="per worker, as Dask takes it ('4GiB', bytes, 'auto')")
    min_workers: int | None = Field(None, ge=0, description="the kernel's autoscaler keeps at least this many")
    max_workers: int | None = Field(None, ge=1, description="... and grows the cluster up to this many")
    idle_timeout: float = Field(10.0, gt=0, description="seconds a worker is idle before it may be closed")

    @model_validator(mode="after")
    def _check(self) -> LocalClusterSettings:
        if self.max_workers is not None and self.workers > self.max_workers:
            raise ValueError(f"workers ({self.workers}) is above maxWorkers ({self.max_workers})")
        if self.min_workers is not None and self.workers < self.min_workers:
            raise ValueError(f"workers ({self.workers}) is below minWorkers ({self.min_workers})")
        low, high = self.bounds
        if low > high:
            raise ValueError(f"minWorkers ({low}) is above maxWorkers ({high})")
        return self

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) workers; both default to ``workers`` (a fixed size)."""
        low = self.workers if self.min_workers is None else self.min_workers
        return low, self.workers if self.max_workers is None else self.max_workers


class SecuritySettings(BaseModel):
    """Passed to ``distributed.Security`` for ``tls://`` schedulers."""

    model_config = _CONFIG

    tls_ca_file: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    require_encryption: bool = False


class DaskSettings(BaseModel):
    """Either ``scheduler`` (an existing cluster) or ``local`` (start one)."""

    model_config = _CONFIG

    transport: str = Field("dask", description="the node transport plugin")
    scheduler: str | None = Field(None, description="tcp://HOST:PORT or tls://HOST:PORT of a running scheduler")
    local: LocalClusterSettings | None = Field(None, description="start a LocalCluster instead")
    security: SecuritySettings | None = Field(None, description="TLS settings for the scheduler (Dask's Security)")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to reach the scheduler before giving up")
    poll_interval: float = Field(0.5, gt=0, description="seconds between looks at the cluster's workers")

    @model_validator(mode="after")
    def _check(self) -> DaskSettings:
        if (self.scheduler is None) == (self.local is None):
            raise ValueError("give exactly one of scheduler (an existing cluster) or local (start one)")
        if self.scheduler is not None and not self.scheduler.startswith(("tcp://", "tls://", "inproc://")):
            raise ValueError(f"scheduler {self.scheduler!r} must start with tcp:// or tls://")
        return self
