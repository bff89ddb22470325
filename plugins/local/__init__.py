"""Local worker processes: the embedded default node type (``"local"``)."""

from __future__ import annotations

from collections.abc import Mapping

from kernel.executor import ExecutorFactory
from kernel.hookspecs import hookimpl


@hookimpl
def kernel_executor_types() -> Mapping[str, ExecutorFactory]:
    from .executor import LocalWorker

    return {LocalWorker.node_type: LocalWorker}
