"""Local worker processes: the embedded default node type (``"local"``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from kernel.hookspecs import hookimpl

if TYPE_CHECKING:  # workers import this package: keep asyncio out of their start-up
    from microkernel.services.execution_manager.executors import WorkerFactory


@hookimpl
def em_executor_types() -> Mapping[str, WorkerFactory]:
    from .worker import LocalWorker

    return {LocalWorker.node_type: LocalWorker}
