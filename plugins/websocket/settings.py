"""The websocket listener's settings: the execution manager's ``custom.nodes``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from microkernel.services.execution_manager.executors import TOKEN_ENV
from microkernel.services.execution_manager.wire.protocol import NODE_MAX_FRAME


class HubSettings(BaseModel):
    """See README "Remote nodes"."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    transport: str = Field("websocket", description="the node transport plugin")
    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(8765, ge=0, le=65535, description="0: any free port")
    token_env: str = Field(TOKEN_ENV, description="environment variable holding the shared token")
    token_file: str | None = Field(None, description="file holding the token (chmod 600); wins over tokenEnv")
    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between a node's heartbeats")
    heartbeat_timeout: float = Field(5.0, gt=0, description="seconds of silence before a node is unhealthy")
    fail_after: float = Field(15.0, gt=0, description="seconds of silence before a node is failed")
    auth_timeout: float = Field(5.0, gt=0, description="seconds a new connection has to authenticate")
    max_waiting: int = Field(64, ge=1, description="connections authenticating at once; past it, closed with 1013")
    max_frame: int = Field(NODE_MAX_FRAME, ge=64 * 1024, description="largest message, in bytes")
    cert_file: str | None = Field(None, description="TLS certificate (PEM): serve wss://")
    key_file: str | None = Field(None, description="TLS private key (PEM)")

    @model_validator(mode="after")
    def _check(self) -> HubSettings:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(f"heartbeatTimeout ({self.heartbeat_timeout}) must be above "
                             f"heartbeatInterval ({self.heartbeat_interval})")
        if self.fail_after <= self.heartbeat_timeout:
            raise ValueError(f"failAfter ({self.fail_after}) must be above heartbeatTimeout "
                             f"({self.heartbeat_timeout})")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile go together")
        return self
