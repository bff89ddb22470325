"""``maxQueue`` at the pool's door: calls held back while the queue is full, in order,
and the producers waiting in :meth:`Admission.room` for it to have room again."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from ..scheduling import Scheduler
from .handles import CallFuture


class Admission:
    """Back-pressure for one pool: at most ``most`` calls wait for a worker (None: no
    limit); the calls past it are held here, admitted first-in first-out as room frees."""

    def __init__(self, most: int | None, sched: Scheduler, loop: asyncio.AbstractEventLoop) -> None:
        self.most = most
        self.held: deque[CallFuture] = deque()
        self._sched = sched  # read only: how many calls wait
        self._loop = loop
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    def __repr__(self) -> str:
        return f"<Admission maxQueue={self.most} held={len(self.held)} waiting for room={len(self._waiters)}>"

    @property
    def full(self) -> bool:
        """Whether ``maxQueue`` calls wait already (or are held waiting for room)."""
        most = self.most
        return most is not None and (self._sched.queued >= most or bool(self.held))

    @property
    def busy(self) -> bool:
        """Whether anything is held or waits for room (worth an :meth:`admit` after a change)."""
        return bool(self.held or self._waiters)

    def withdraw(self, fut: CallFuture) -> bool:
        """Take ``fut`` back if it is held (its caller cancelled it); whether it was."""
        if fut in self.held:
            self.held.remove(fut)
            return True
        return False

    async def room(self) -> None:
        """Return once the queue has room for another call (at once if it has, or once
        the pool closes)."""
        while self.full and not self.closed:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def admit(self, submit: Callable[[CallFuture], None]) -> None:
        """Room freed: ``submit`` held calls while there is room, then wake room() waiters."""
        most = self.most
        while self.held and (most is None or self._sched.queued < most):
            fut = self.held.popleft()
            if not fut.done():
                submit(fut)
        while self._waiters and not self.full:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> list[CallFuture]:
        """No more room will come: wake every waiter and hand back the calls held."""
        self.closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        held, self.held = list(self.held), deque()
        return held
