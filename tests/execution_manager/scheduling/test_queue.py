"""The call queue without processes: order, aging and project limits."""

from __future__ import annotations

import asyncio

import pytest

from microkernel.services.execution_manager.executors import Attempt
from microkernel.services.execution_manager.scheduling.queue import CallQueue

pytestmark = pytest.mark.anyio


def make(i: int, priority: int = 5, project: str | None = None, at: float = 0.0) -> Attempt:
    call = Attempt(i, 0, b"", asyncio.get_running_loop().create_future(), f"c{i}", (), priority, project)
    call.queued_at = at
    return call


def drain(queue: CallQueue, now: float = 0.0, eligible=lambda _p: True) -> list[int]:
    order = []
    while (call := queue.peek(now, eligible)) is not None:
        queue.discard(call)
        order.append(call.id)
    return order


async def test_priority_then_fifo() -> None:
    b = CallQueue(aging=0)
    for i, prio in enumerate([5, 1, 9, 5, 9, 1]):
        b.push(make(i, prio, at=float(i)))
    assert len(b) == 6 and b.by_priority() == {9: 2, 5: 2, 1: 2}
    assert drain(b) == [2, 4, 0, 3, 1, 5]
    assert len(b) == 0 and not b


async def test_aging_lets_an_old_low_priority_call_through() -> None:
    b = CallQueue(aging=1.0)
    b.push(make(1, priority=0, at=0.0))
    for i in range(2, 6):
        b.push(make(i, priority=8, at=9.5))
    assert drain(b, now=10.0)[0] == 1  # waited 10 s: effective 10 > 8 + 0.5


async def test_a_project_at_its_limit_is_skipped_not_blocking() -> None:
    b = CallQueue(aging=0)
    b.push(make(1, project="busy", at=0.0))
    b.push(make(2, project="busy", at=1.0))
    b.push(make(3, project="free", at=2.0))
    b.push(make(4, at=3.0))
    assert drain(b, eligible=lambda p: p != "busy") == [3, 4]
    assert b.by_project() == {"busy": 2}
    assert drain(b) == [1, 2]


async def test_discard_anywhere() -> None:
    b = CallQueue(aging=0)
    calls = [make(i, at=float(i)) for i in range(4)]
    for c in calls:
        b.push(c)
    assert b.discard(calls[2]) and not b.discard(calls[2])
    assert b.discard(calls[0])  # the head, too
    assert drain(b) == [1, 3] and len(b) == 0
