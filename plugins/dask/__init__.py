"""Dask as the pool's remote capacity: the workers of an existing Dask cluster (or of a
``LocalCluster`` started for you) run the kernel's calls beside local workers and
nodes. Install with ``pip install 'microkernel-em[dask]'``; select with the execution
manager's ``custom.nodes = {"transport": "dask", "scheduler": "tcp://HOST:8786"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from kernel.hookspecs import hookimpl

if TYPE_CHECKING:
    from microkernel.services.execution_manager.executors import NodeTransport


@hookimpl
def em_node_transports() -> Mapping[str, NodeTransport]:
    from .transport import DaskTransport  # imports no Dask: that waits for the listener

    return {"dask": DaskTransport()}
