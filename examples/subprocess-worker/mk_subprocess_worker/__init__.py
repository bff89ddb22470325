"""An executor plugin kept outside the built-ins: the ``subprocess`` node type, whose
workers each run their calls, one after another, in a child process of their own.

It imports only the execution manager's public faces (``executors``, ``wire``,
``errors``) and registers itself through the ``microkernel.plugins`` entry point
(``pyproject.toml``). Select it with ``"nodeType": "subprocess"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from kernel import hookimpl

if TYPE_CHECKING:
    from microkernel.services.execution_manager.executors import WorkerFactory


@hookimpl
def em_executor_types() -> Mapping[str, WorkerFactory]:
    from .worker import SubprocessWorker

    return {SubprocessWorker.node_type: SubprocessWorker}
