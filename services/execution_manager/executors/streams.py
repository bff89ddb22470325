"""A thin asyncio transport over :class:`microkernel.services.execution_manager.wire.connection.Connection`
for byte streams.

The first frame written in a turn of the event loop goes out at once (latency); the
ones after it in the same turn go out together at the end of the turn (throughput), so
many calls in flight cost two system calls a turn, not one each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..wire import Connection, Event, ProtocolError


class TurnBatcher:
    """Writes the first chunk of a turn of the event loop at once (latency) and the rest
    of the turn together at its end (throughput), through ``write``."""

    __slots__ = ("_armed", "_out", "_write")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._out: list[bytes] = []
        self._armed = False  # a flush is scheduled for the end of this turn

    def put(self, data: bytes) -> None:
        if self._armed:
            self._out.append(data)
            return
        self._armed = True
        asyncio.get_running_loop().call_soon(self.flush)
        self._write(data)

    def flush(self) -> None:
        """Write what waits now (also run at the end of each turn)."""
        self._armed = False
        if self._out:
            self._write(self.take())

    def take(self) -> bytes:
        """Everything waiting, removed from the batch."""
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data


class FrameStream(asyncio.Protocol):
    """Feeds received bytes to ``conn`` and hands each event to ``on_event``.

    ``on_lost`` is called once, with the error if the peer broke the protocol or the
    connection failed, or None on a clean end of stream.
    """

    def __init__(
        self,
        conn: Connection,
        on_event: Callable[[Event], None],
        on_lost: Callable[[BaseException | None], None],
    ) -> None:
        self.conn = conn
        self._on_event = on_event
        self._on_lost = on_lost
        self._batch = TurnBatcher(self._write_now)
        self._transport: asyncio.Transport | None = None
        self._lost = False
        self.heard = time.monotonic()  # when the peer last sent anything


    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self.close()
            self._lose(exc)
            return
        on_event = self._on_event
        for event in events:
            on_event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc)

    def _lose(self, exc: BaseException | None) -> None:
        if not self._lost:
            self._lost = True
            self._on_lost(exc)

    def write(self, data: bytes) -> None:
        """Write ``data`` now if it is the turn's first frame, else at the turn's end."""
        self._batch.put(data)

    def _write_now(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._batch.flush()
        if self._transport is not None:
            self._transport.close()

    @property
    def closed(self) -> bool:
        return self._lost
