"""The hot path over websockets' own connections.

websockets is sans-I/O underneath (``connection.protocol``); its asyncio layer hands
each received message to a task through ``recv()`` and sends through a coroutine.
For a stream of small call frames that costs two task wake-ups per message each way,
so admitted connections take a shorter path: a whole binary frame, found in the bytes
as they arrive (:mod:`.framing`), goes straight to ``on_message``, and sends are built
and written synchronously, the first of a turn at once and the rest of the turn
batched into one message (the node protocol allows several msgpack messages per
message). Anything else (text, fragments, control frames, closing) takes websockets'
normal path, and so does the handshake (:func:`handshake`), which both ends share.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.protocol import SERVER, State

from microkernel.services.execution_manager.executors import TurnBatcher
from microkernel.services.execution_manager.wire import Connection, ProtocolError, node as n

from .framing import FrameSplitter, binary_frame


class _FastPath:
    on_message: Callable[[bytes], None] | None = None
    _splitter: FrameSplitter | None = None

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol  # type: ignore[attr-defined]
        if protocol.state is State.CONNECTING:
            # HTTP, not frames: read as frames, a long answer from something that is not a
            # kernel (a dashboard's page) looked like an unfinished frame, and the handshake hung.
            super().data_received(data)  # type: ignore[misc]
            return
        splitter = self._splitter
        if splitter is None:
            splitter = self._splitter = FrameSplitter(masked=protocol.side is SERVER)
        for payload, raw in splitter.feed(data, protocol.max_message_size):
            handler = self.on_message
            if (payload is not None and handler is not None and protocol.state is State.OPEN
                    and protocol.current_size is None):  # not inside a fragmented message
                handler(payload)
            else:
                super().data_received(bytes(raw))  # type: ignore[misc]


class FastServerConnection(_FastPath, ServerConnection):
    """A server connection with the direct receive path (see the module docstring)."""


class FastClientConnection(_FastPath, ClientConnection):
    """A client connection with the direct receive path (see the module docstring)."""


class Outbox(TurnBatcher):
    """Queue bytes with :meth:`put` (never blocks): the turn's first goes out at once,
    the rest of the turn together at its end, as one websocket message."""

    def __init__(self, ws: FastServerConnection | FastClientConnection) -> None:
        super().__init__(partial(_send_now, ws))


def _send_now(ws: FastServerConnection | FastClientConnection, data: bytes) -> None:
    protocol = ws.protocol
    if protocol.state is not State.OPEN:
        return  # closing: what was not sent is failed by the session's end
    ws.transport.write(binary_frame(data, mask=protocol.side is not SERVER))


async def handshake(ws: ServerConnection | ClientConnection, link: Connection, done: Callable[[], bool]) -> None:
    """Trade handshake messages through ``link`` until ``done()``.

    :raises ProtocolError: the peer broke the handshake (a text frame included).
    """
    while not done():
        data = await ws.recv()
        if isinstance(data, str):
            raise ProtocolError("text frames are not accepted; send binary msgpack", code=n.CLOSE_TEXT)
        link.receive_data(data)
        out = link.outgoing()
        if out:
            await ws.send(out)
