"""Calls run on threads of the kernel's process, through the same runtime as workers."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from kernel.errors import PoolClosedError, WorkerCrashedError
from kernel.executor import Call, Executor, ExecutorInfo, WorkerState
from kernel.runtime import Reply, Runtime

_S = WorkerState


class InMemoryExecutor(Executor):
    """Runs calls on ``slots`` threads (default 1) of this process.

    Arguments, instances and results are pickled exactly as for a worker process,
    so code that works here works on a worker. Sync code runs off the event loop.
    """

    node_type = "inmemory"

    def __init__(self, worker_id: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(worker_id, options)
        self.slots = int(self.options.get("slots", 1))
        self._runtime = Runtime(worker_id)
        self._threads: ThreadPoolExecutor | None = None
        self._waiting: deque[Call] = deque()
        self._running = 0

    def info(self) -> ExecutorInfo:
        return ExecutorInfo(pid=os.getpid(), slots=self.slots)

    async def start(self) -> None:
        self.set_state(_S.REGISTERING)
        self._threads = ThreadPoolExecutor(self.slots, thread_name_prefix=self.id)
        self.set_state(_S.AVAILABLE)

    def submit(self, call: Call) -> None:
        if self.state not in (_S.AVAILABLE, _S.RUNNING):
            raise PoolClosedError(f"executor {self.id} is {self.state.value} and takes no calls")
        self.inflight[call.id] = call
        if self.state == _S.AVAILABLE:
            self.set_state(_S.RUNNING)
        self._waiting.append(call)
        self._pump()

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.slots and self._waiting and self._threads is not None:
            call = self._waiting.popleft()
            self._running += 1
            fut = loop.run_in_executor(self._threads, self._runtime.execute, call.kind, call.payload)
            fut.add_done_callback(partial(self._done, call))

    def _done(self, call: Call, fut: asyncio.Future[Reply]) -> None:
        self._running -= 1
        if call.id in self.inflight:
            self._finish(call, fut.result())
        self._pump()

    def cancel(self, call_id: int) -> bool:
        for call in self._waiting:
            if call.id == call_id:
                self._waiting.remove(call)
                self._drop(call_id)
                return True
        return False

    async def stop(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        if not self._begin_stop():
            return
        if drain and self.inflight:
            await asyncio.wait([c.future for c in self.inflight.values()], timeout=timeout)
        waiting = {c.id for c in self._waiting}
        self._waiting.clear()
        # Threads cannot be killed: calls still running finish in the background.
        self._fail_all(lambda c, _first: WorkerCrashedError(
            f"executor {self.id} was stopped {'before starting' if c.id in waiting else 'while running'} "
            f"{c.describe()}",
            worker_id=self.id, pid=os.getpid(), call=c.describe(), started=c.id not in waiting,
        ))
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        self._runtime.close()
        self.set_state(_S.TERMINATED)
