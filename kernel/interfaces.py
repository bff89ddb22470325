"""Interfaces the kernel defines and services implement (the kernel imports no service)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, runtime_checkable

EXECUTION_MANAGER = "execution-manager"


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
