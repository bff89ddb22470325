"""Batching sends: frames queued during one turn of the event loop go out as one
websocket message (the node protocol allows several msgpack messages per message)."""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed


class Outbox:
    """Queue bytes with :meth:`put` (never blocks); :meth:`run` sends them."""

    def __init__(self, ws: Connection) -> None:
        self.ws = ws
        self._out: list[bytes] = []
        self._wake = asyncio.Event()

    def put(self, data: bytes) -> None:
        self._out.append(data)
        self._wake.set()

    def take(self) -> bytes:
        """Everything queued and not yet sent."""
        data = b"".join(self._out)
        self._out.clear()
        return data

    async def run(self) -> None:
        """Send until cancelled or the connection closes."""
        out, ws, wake = self._out, self.ws, self._wake
        with contextlib.suppress(ConnectionClosed):
            while True:
                await wake.wait()
                wake.clear()
                while out:
                    data = out[0] if len(out) == 1 else b"".join(out)
                    out.clear()
                    await ws.send(data)
