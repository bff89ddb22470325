"""Remote nodes over websockets: the kernel listens, ``kernel node`` dials in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from kernel.hookspecs import hookimpl

if TYPE_CHECKING:
    from microkernel.services.execution_manager.executors import NodeTransport


@hookimpl
def em_node_transports() -> Mapping[str, NodeTransport]:
    from .transport import WebsocketTransport

    return {"websocket": WebsocketTransport()}
