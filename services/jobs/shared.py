"""Kernels sharing one store (PostgreSQL): who takes which job, and hearing of jobs run
elsewhere.

:class:`SharedQueue` says this kernel lives and takes back dead kernels' jobs every poll
interval, and takes queued jobs while its :class:`.runner.Runner` has room: every poll
interval, and at once when a job ends here or another kernel tells of one (the store's
``listen``). Only the store hears of a job another kernel runs, so those waiting for one
look again every poll interval (:meth:`SharedQueue.slice`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from microkernel.services.execution_manager.wire.serialization import type_name  # loaded with the manager

if TYPE_CHECKING:
    from .runner import Runner
    from .store import JobStore

log = structlog.get_logger("jobs")


class SharedQueue:
    """This kernel's part in a queue several kernels take from (see the module docstring)."""

    def __init__(self, store: JobStore, runner: Runner, interval: float, notify: Callable[[str], None]) -> None:
        self.store, self.runner, self.interval, self._notify = store, runner, interval, notify
        self._look = asyncio.Event()  # look for jobs now (one ended here, or one was told)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Listen to the store and poll it, until :meth:`stop`."""
        loop = asyncio.get_running_loop()

        def heard(job_id: str) -> None:  # on the store's listening thread
            loop.call_soon_threadsafe(self.heard, job_id)

        self.store.listen(heard)
        self._task = asyncio.create_task(self._poll())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def room_made(self) -> None:
        """A job ended here: take the next one at once."""
        self._look.set()

    def offer(self, job_id: str) -> bool:
        """A job submitted here: True if this kernel takes it; else the first kernel with
        room will (the others are told)."""
        if self.runner.room() and self.store.claim(job_id):
            return True
        self.store.tell()
        return False

    def heard(self, job_id: str) -> None:
        """The store told: ``job_id`` finished in some kernel, or ("") a job waits."""
        if job_id:
            self._notify(job_id)
        else:
            self._look.set()

    def slice(self, left: float | None) -> float | None:
        """How long to wait for news of a job before looking again."""
        return self.interval if left is None else min(left, self.interval)

    async def _poll(self) -> None:
        store, runner, interval = self.store, self.runner, self.interval
        beaten = 0.0
        while True:
            self._look.clear()
            try:
                if time.monotonic() - beaten >= interval:
                    beaten = time.monotonic()
                    for job in store.beat():
                        log.warning("job lost with its kernel", job_id=job.id, error=job.error)
                while room := runner.room():
                    taken = store.claim_queued(room)
                    for job in taken:
                        runner.launch(job)
                    if len(taken) < room:
                        break
            except Exception as exc:  # the server is away: say so, and look again later
                log.error("the job store failed", store=store.where, error=f"{type_name(exc)}: {exc}")
                await asyncio.sleep(interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look.wait(), interval)
