"""Interfaces between the kernel and services, both ways (the kernel imports no service).

:class:`ServiceHost` is what a service and a hook see of the kernel that started it;
:class:`Dispatcher` is what ``@distributed`` needs from an execution manager. Kept free
of imports of the kernel's other modules, so both sides depend on this one.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pluggy

EXECUTION_MANAGER = "execution-manager"


class ServiceState(enum.StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    SKIPPED = "skipped"  # a dependency failed
    STOPPED = "stopped"


class ServiceHost(Protocol):
    """What a service (``BaseService.kernel``) and a hook see of the kernel."""

    id: str  # host name and pid, bound in every log line its services write
    pm: pluggy.PluginManager
    hook: pluggy.HookRelay
    hurry: asyncio.Event  # set on a second SIGINT/SIGTERM while stopping, or at the stop deadline: stop at once

    def get_service(self, name: str, *, requester: str | None = None) -> Any:
        """The running service ``name``, as visible to ``requester`` (a service's name,
        or None for application code).

        :raises ServiceNotFoundError: unknown, or not running.
        :raises ServiceAccessError: neither global nor a dependency of ``requester``.
        """
        ...

    def find_service(self, name: str) -> Any | None:
        """The running service ``name`` or None, without visibility rules."""
        ...

    def manifest_path(self, name: str) -> Path:
        """The config.json a loaded service came from."""
        ...

    def service_states(self) -> dict[str, ServiceState]:
        """Every known service and its state, in start order."""
        ...

    def service_error(self, name: str) -> BaseException | None:
        """Why a service failed or was skipped, if it did."""
        ...


@runtime_checkable
class Dispatcher(Protocol):
    """What ``@distributed`` needs from the execution manager."""

    def call_method(
        self, instance: Any, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Awaitable[Any]:
        """Run ``instance.method(*args, **kwargs)`` where the manager places it.

        An instance pinned with ``assign_optimal_worker`` runs on its worker's copy,
        in call order; any other instance runs on a replica made for the call.
        """
        ...
