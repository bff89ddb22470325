"""Helpers for remote-node tests: a real hub, real node agents (``kernel node``) in
their own processes, and a raw client speaking the real protocol for bad input."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from microkernel.plugins.websocket.listener import NodeHub
from microkernel.plugins.websocket.settings import HubSettings
from microkernel.services.execution_manager.wire import NodeSide

TOKEN = "s3cret-test-token"
ROOT = Path(__file__).resolve().parent.parent


def node_env(token: str = TOKEN) -> dict[str, str]:
    return {**os.environ, "MICROKERNEL_NODE_TOKEN": token, "KERNEL_LOG_LEVEL": "info"}


async def start_node(
    url: str, *, slots: int = 1, node_id: str = "n1", args: Sequence[str] = (), token: str = TOKEN,
    netns: str | None = None,
) -> asyncio.subprocess.Process:
    """``kernel node --connect URL`` in its own process (optionally in a network namespace)."""
    cmd = [sys.executable, "-m", "kernel", "node", "--connect", url, "--slots", str(slots),
           "--node-id", node_id, "--reconnect-max", "1", *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, env=node_env(token), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, start_new_session=True,
    )


async def stop_node(proc: asyncio.subprocess.Process, *, timeout: float = 15.0) -> int:
    """SIGTERM (drain), then SIGKILL the whole group if it lingers; the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
    try:
        async with asyncio.timeout(timeout):
            return await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise AssertionError(f"node {proc.pid} did not stop within {timeout} s") from None


async def until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie not yet reaped counts as ended)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.asynccontextmanager
async def running_hub(**settings: Any) -> AsyncIterator[NodeHub]:
    hub = NodeHub(HubSettings(port=0, **settings), TOKEN.encode())
    await hub.start(None)
    try:
        yield hub
    finally:
        await hub.stop()


class RawNode:
    """A client speaking the real node protocol by hand, to send what a node would not."""

    def __init__(self, ws: ClientConnection, node_id: str = "raw", token: str = TOKEN) -> None:
        self.ws = ws
        self.link = NodeSide(token.encode(), node_id=node_id, info={"python": sys.version.split()[0]})

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, **kwargs: Any) -> AsyncIterator[RawNode]:
        async with connect(url, compression=None, proxy=None, max_size=None) as ws:
            yield cls(ws, **kwargs)

    async def handshake(self) -> None:
        await self.ws.send(self.link.hello())
        while not self.link.is_open:
            self.link.receive_data(await self.ws.recv())  # type: ignore[arg-type]
            out = self.link.outgoing()
            if out:
                await self.ws.send(out)

    async def closed_with(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Wait for the kernel to close; its close code and reason."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        return self.ws.close_code, self.ws.close_reason or ""
