"""What the conformance checks run on a worker: importable by reference there, so this
module imports only the kernel's runtime dependencies (never pytest)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from kernel import task
from kernel.errors import RequestError
from kernel.task import PROGRESS_INTERVAL


class Accumulator:
    """State that lives on the worker while pinned."""

    __distributed_methods__: dict[str, Any] = {}

    def __init__(self) -> None:
        self.items: list[int] = []

    def add(self, x: int) -> int:
        self.items.append(x)
        return len(self.items)

    def on_message(self, msg: Any) -> dict[str, Any]:
        return {"items": len(self.items), "echo": msg}

    async def add_async(self, x: int) -> int:
        await asyncio.sleep(0)
        return self.add(x)


Accumulator.__distributed_methods__ = {"add": Accumulator.add, "add_async": Accumulator.add_async}


def fail(message: str) -> None:
    raise ValueError(message)


def unpicklable_result() -> Any:
    return threading.Lock()


def chatty(n: int) -> str:
    """Reports progress, logs, and asks the kernel, as user code does (kernel.task)."""
    for i in range(n):
        task.progress((i + 1) / n, f"step {i + 1}")
        time.sleep(PROGRESS_INTERVAL)
    task.log("chatty done", level="warning", steps=n)
    try:
        task.request("missing")
    except RequestError as exc:
        refused = str(exc)
    return f"{task.request('echo', n, tag='x')}|{refused}"


async def chatty_async(n: int) -> Any:
    task.progress(0.5, "half")
    return await task.arequest("echo", n)


def exit_after(seconds: float) -> None:
    """Ends the worker's process (as a segfault or the OOM killer would) a moment in."""
    time.sleep(seconds)
    os._exit(17)


class Quiet:
    """Pinned state without an ``on_message``: a message to it is answered with why not."""

    __distributed_methods__: dict[str, Any] = {}
