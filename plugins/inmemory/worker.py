"""Calls run on threads of the kernel's process, through the same runtime as workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from kernel.errors import RequestError
from microkernel.services.execution_manager.executors import (
    Attempt,
    Reply,
    Runtime,
    WorkerBase,
    WorkerInfo,
    WorkerState,
)
from microkernel.services.execution_manager.wire import protocol as p

_S = WorkerState


def _ignore(_rid: int, _ok: bool, _payload: bytes) -> None:
    pass


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Bridge:
    """The :class:`~microkernel.services.execution_manager.executors.CallChannel` of calls
    on this process's threads: their traffic goes to the worker on the event loop's
    thread."""

    def __init__(self, worker: InMemoryWorker) -> None:
        self.worker = worker

    def _on_loop(self, message: p.Progress | p.Log | p.Request,
                 respond: Callable[[int, bool, bytes], None] = _ignore) -> None:
        loop = self.worker.loop
        if loop is None or loop.is_closed():
            raise RequestError(f"worker {self.worker.id} is not running")
        loop.call_soon_threadsafe(self.worker.report_traffic, message, respond)

    def progress(self, task_id: int, fraction: float, message: str) -> None:
        with contextlib.suppress(RequestError, RuntimeError):
            self._on_loop(p.Progress(task_id, fraction, message))

    def log(self, task_id: int, level: str, message: str, fields: Mapping[str, Any]) -> None:
        with contextlib.suppress(RequestError, RuntimeError):
            self._on_loop(p.Log(task_id, level, message, dict(fields)))

    def request(self, task_id: int, route: str, payload: bytes) -> tuple[bool, bytes]:
        if _running_loop() is self.worker.loop:
            raise RequestError("task.request on the kernel's event loop thread would deadlock it")
        answer: Future[tuple[bool, bytes]] = Future()
        try:
            self._on_loop(p.Request(0, task_id, route, payload), lambda _r, ok, data: answer.set_result((ok, data)))
        except RuntimeError as exc:  # the loop closed meanwhile
            raise RequestError(f"worker {self.worker.id} is not running") from exc
        return answer.result()


class InMemoryWorker(WorkerBase):
    """Runs calls on ``threads`` threads (default 1) of this process.

    Arguments, instances and results are pickled exactly as for a worker process,
    so code that works here works on a worker. Sync code runs off the event loop.
    """

    node_type = "inmemory"

    def __init__(self, worker_id: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(worker_id, options)
        self.threads = int(self.options.get("threads", 1))
        self._runtime = Runtime(worker_id, _Bridge(self))
        self._threads: ThreadPoolExecutor | None = None
        self._waiting: deque[Attempt] = deque()
        self._running = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def info(self) -> WorkerInfo:
        return WorkerInfo(pid=os.getpid(), width=self.threads)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.set_state(_S.REGISTERING)
        self._threads = ThreadPoolExecutor(self.threads, thread_name_prefix=self.id)
        self.set_state(_S.AVAILABLE)

    def submit(self, attempt: Attempt) -> None:
        self._check_accepting()
        self._hold(attempt)
        self._waiting.append(attempt)
        self._pump()

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.threads and self._waiting and self._threads is not None:
            call = self._waiting.popleft()
            self._running += 1
            fut = loop.run_in_executor(self._threads, self._runtime.execute, call.kind, call.payload, call.id,
                                       call.attempt)
            fut.add_done_callback(partial(self._done, call))

    def _done(self, attempt: Attempt, fut: asyncio.Future[Reply]) -> None:
        self._running -= 1
        if attempt.id in self.inflight:
            self._finish(attempt, fut.result())
        self._pump()

    def cancel(self, task_id: int) -> bool:
        return self._cancel_from(self._waiting, task_id)

    async def stop(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        if not self._begin_stop():
            return
        await self._let_finish(drain, timeout)
        waiting = {c.id for c in self._waiting}
        self._waiting.clear()
        # Threads cannot be killed: calls still running finish in the background.
        self._fail_stopped(waiting, pid=os.getpid())
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self._runtime.close()
        self.set_state(_S.TERMINATED)
