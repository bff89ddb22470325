"""Tasks an object starts and does not await at once (a retirement, a reply, an async
event subscriber): kept referenced until they end (the event loop holds tasks only
weakly), logged if they fail, and awaited together when their owner stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import structlog

log = structlog.get_logger("kernel")


class Background:
    """The background tasks of one owner (named ``owner`` in failure logs)."""

    __slots__ = ("_owner", "_tasks")

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``work`` (a coroutine or other awaitable) on the running loop."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("background task failed", owner=self._owner, error=f"{type(exc).__name__}: {exc}")

    async def join(self) -> None:
        """Wait for the tasks still running (their errors are logged, not raised)."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
