"""The seam for remote nodes: a transport plugin listens for nodes on the kernel's
side and runs the node agent on theirs.

A transport (registered through ``em_node_transports``) makes a
:class:`NodeListener` from the execution manager's ``custom.nodes`` settings. The
listener admits nodes and hands each of their worker slots, as a started
:class:`~microkernel.services.execution_manager.executors.Worker`, to its :class:`NodeHost` (the execution
manager's pool), which places calls on them like on any worker. The same transport
runs the agent (``kernel node --connect URL``) from a :class:`NodeConfig`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kernel import tokens
from kernel.errors import PluginError

from .interface import Worker

TOKEN_ENV = "MICROKERNEL_NODE_TOKEN"


class NodeHost(Protocol):
    """Where a listener's executors go (the execution manager's pool)."""

    def adopt(self, executor: Worker) -> None:
        """Take a started executor in; it is placed on from now on."""

    async def retire(self, worker_id: str, reason: str = "retired") -> None:
        """Move its pinned instances away, let its calls finish, then stop it."""

    @property
    def waiting(self) -> int:
        """Calls waiting for a worker (a listener that can grow its cluster reads it)."""


@dataclass(frozen=True)
class NodeInfo:
    """One connected node, for stats and status views."""

    id: str
    address: str
    state: str  # available | unhealthy | draining
    slots: int
    running: int
    cpu_percent: float
    memory_percent: float
    heartbeat_age: float  # seconds since anything arrived from it
    labels: Mapping[str, float] = field(default_factory=dict)
    python: str = ""
    version: str = ""


class NodeListener(ABC):
    """The kernel's end: accepts nodes and adopts their slots into ``host``.

    :raises ConfigError: from the factory, on invalid settings (names the field).
    """

    @abstractmethod
    async def start(self, host: NodeHost) -> str:
        """Start listening; return the address nodes connect to (``ws://HOST:PORT``).

        :raises PluginError: the address cannot be bound (names it and the setting).
        """

    @abstractmethod
    def stop_accepting(self) -> None:
        """Admit no more nodes (the kernel is stopping); slots already adopted stay
        until the pool stops them, and are not replaced."""

    @abstractmethod
    async def stop(self) -> None:
        """Tell every node the kernel is going away and close. Idempotent."""

    @abstractmethod
    def nodes(self) -> list[NodeInfo]:
        """The nodes connected now."""

    @abstractmethod
    def refusals(self) -> Mapping[str, int]:
        """How many connections were refused, by reason (``auth``, ``protocol``...)."""

    def problem(self) -> str | None:
        """What keeps it from serving now, for status views (a cluster it cannot
        reach...), or None."""
        return None


@dataclass(frozen=True)
class NodeConfig:
    """What ``kernel node`` runs with."""

    url: str
    token: bytes = field(repr=False)
    node_id: str
    slots: int
    labels: Mapping[str, float] = field(default_factory=dict)
    node_type: str = "local"  # the node type (executor plugin) whose workers run calls on the node
    executor_options: Mapping[str, Any] = field(default_factory=dict)
    ca_file: str | None = None
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    drain_timeout: float = 60.0
    worker_timeout: float = 5.0  # a worker stopped, or idle and unanswering, this long is replaced


class NodeTransport(ABC):
    """A way for nodes to reach the kernel (websockets, ...)."""

    #: URL schemes ``kernel node --connect`` accepts for this transport
    schemes: tuple[str, ...] = ()

    @abstractmethod
    def listener(self, settings: Mapping[str, Any], source: str | os.PathLike[str] = "custom.nodes") -> NodeListener:
        """The kernel's end, from ``custom.nodes`` (validated here).

        :raises ConfigError: invalid settings, naming ``source`` (the manifest they
            came from) and each field; or no token could be read.
        """

    async def run_node(self, config: NodeConfig) -> int:
        """Run a node agent until it is drained (SIGTERM) or refused for good;
        return the process exit code. Transports whose nodes are someone else's
        processes (a Dask cluster's workers) have no agent and keep this default.

        :raises PluginError: this transport has no node agent.
        """
        raise PluginError(f"the {type(self).__name__} transport has no `kernel node` agent")


def package_version() -> str:
    """This project's installed version, which nodes and the kernel compare."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("microkernel-em")
    except PackageNotFoundError:
        return "0+unknown"


def read_token(env: str = TOKEN_ENV, file: str | os.PathLike[str] | None = None) -> bytes:
    """The shared node token (see :func:`kernel.tokens.read_token`).

    :raises ConfigError: neither ``file`` nor ``$env`` holds one, or the file is
        unreadable or readable by others.
    """
    return tokens.read_token(env, file, what="node token")
