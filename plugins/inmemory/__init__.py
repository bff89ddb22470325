"""The in-memory executor (``"inmemory"``): calls run in the kernel's own process.

A real plugin, not a test double: tests of the kernel and of services that are not
about processes use it, and the execution manager uses it to run calls locally when
the machine is idle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from kernel.hookspecs import hookimpl

if TYPE_CHECKING:  # workers import this package: keep asyncio out of their start-up
    from microkernel.services.execution_manager.executors import WorkerFactory


@hookimpl
def em_executor_types() -> Mapping[str, WorkerFactory]:
    from .worker import InMemoryWorker

    return {InMemoryWorker.node_type: InMemoryWorker}
