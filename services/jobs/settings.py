"""The job service's ``custom`` settings (camelCase in config.json)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kernel.errors import KernelError
from kernel.tokens import DATA_ENV, data_dir

TOKEN_ENV = "MICROKERNEL_JOBS_TOKEN"
TOKEN_FILE = "jobs.token"  # in the data folder, when neither a file nor the env gives the token
DEFAULT_PORT = 8791  # beside the dashboard (8790); 8786 is Dask's scheduler
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})




class ApiSettings(BaseModel):
    """``custom.api``: where the job API listens and how it is secured."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    host: str = Field("127.0.0.1", description="address to listen on; another than loopback needs TLS or insecure")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="0: any free port")
    token_env: str = Field(TOKEN_ENV, description="environment variable with the token")
    token_file: str | None = Field(None, description="file with the token; else the env, else one is made")
    cert_file: str | None = Field(None, description="TLS certificate (PEM), with keyFile")
    key_file: str | None = Field(None, description="TLS private key (PEM)")
    insecure: bool = Field(False, description="listen beyond loopback without TLS (the token then travels in clear)")
    max_body: int = Field(1024 * 1024, gt=0, description="largest request body in bytes")
    max_depth: int = Field(32, ge=2, le=1000, description="how deep objects and lists may nest in a request body")
    max_list_bytes: int = Field(8 * 1024 * 1024, gt=0,
                                description="GET /jobs stops adding jobs once their stored text passes this")
    body_timeout: float = Field(10.0, gt=0, le=3600,
                                description="seconds a request's body may take to arrive (a floor on its rate)")
    client_timeout: float = Field(5.0, gt=0, le=3600,
                                  description="seconds a connection may sit idle or take over a request's headers")
    max_connections: int = Field(256, ge=1, description="connections open at once; past it, 503")

    @model_validator(mode="after")
    def _check(self) -> ApiSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile go together")
        if self.host not in LOOPBACK and self.cert_file is None and not self.insecure:
            raise ValueError(f"host {self.host!r} is not loopback: give certFile and keyFile (TLS), "
                             "or set insecure: true to send the token in clear")
        return self


class JobSettings(BaseModel):
    """Every knob of the job service; see README "Jobs from outside"."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    api: ApiSettings | None = Field(None, description="the HTTP API (kernel run turns it on); null: no jobs")
    data_dir: str | None = Field(None, description=f"where the store lives (default ${DATA_ENV} or ~/.local/share)")
    allow_shell: bool = Field(False, description="accept shell-command jobs")
    allow_code: bool = Field(False, description="accept Python-source jobs")
    max_result_bytes: int = Field(1024 * 1024, gt=0, description="largest result kept, as JSON")
    max_log_bytes: int = Field(1024 * 1024, gt=0, description="log kept per job; later lines are dropped")
    retention: float = Field(7 * 24 * 3600.0, gt=0, description="seconds a finished job is kept")
    store: str | None = Field(None, description="postgresql://... to share one queue among kernels; null: SQLite "
                                                "in the data folder")
    poll_interval: float = Field(0.5, gt=0, description="seconds between looks for jobs other kernels left (shared)")
    orphan_after: float = Field(30.0, gt=0, description="seconds a kernel may be silent before others take its jobs")

    @model_validator(mode="after")
    def _check_store(self) -> JobSettings:
        if self.store is not None and not self.store.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"store must be a postgresql:// address (or null for SQLite), not {self.store[:40]!r}")
        return self

    def folder(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir else data_dir()


class JobError(KernelError):
    """A job request the service refuses: ``field`` names what is wrong (``status``: the HTTP answer)."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status
