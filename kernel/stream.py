"""A thin asyncio transport over :class:`kernel.protocol.Connection` for byte streams.

Frames written in one turn of the event loop go out in one write, so many calls in
flight cost one system call, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .protocol import Connection, Event, ProtocolError


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
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
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
        """Queue ``data``; it is written at the end of this loop turn."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out = self._out
        if not out or self._transport is None or self._transport.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._transport.write(data)

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()

    @property
    def closed(self) -> bool:
        return self._lost
