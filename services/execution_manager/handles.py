"""What ``submit`` and ``@distributed`` calls return: an asyncio future, already placed.

Like Dask's ``client.submit`` and Ray's ``.remote()``, the call starts when it is made,
not when it is awaited, so ``asyncio.gather`` over thousands of calls costs no task
per call. Awaiting gives the result (or raises the call's exception); cancelling it
drops the call from the queue, or frees its worker's slot when it is running.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kernel.errors import CallTimeoutError, ExecutionError, SerializationError, WorkerCrashedError
from kernel.executor import Call
from kernel.serialization import loads

if TYPE_CHECKING:
    from .events import EventBus
    from .pool import WorkerPool

Reply = tuple[bool, Any]
MAX_REQUEUES = 10  # a call whose workers keep dying before it starts still ends
Rebuild = Callable[[Any], BaseException]


class CallFuture(asyncio.Future[Any]):
    """The result of one call (through its retries). Await it, or ``cancel()`` it."""

    def __init__(
        self, pool: WorkerPool, rebuild: Rebuild, *, label: str = "call",
        make_call: Callable[[], Call] | None = None, retries: int = 0, events: EventBus | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(loop=asyncio.get_running_loop())
        self._pool = pool
        self._rebuild = rebuild
        self._label = label
        self._make_call = make_call
        self._retries = retries
        self._attempt = 0
        self._requeued = 0
        self._events = events
        self._call: Call | None = None
        self._reply: asyncio.Future[Reply] | None = None
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        if timeout is not None:
            self._timer = self.get_loop().call_later(timeout, self._expire)
            self.add_done_callback(lambda _f: self._timer.cancel() if self._timer else None)

    def start(self) -> CallFuture:
        """Make and place the call (or its next attempt)."""
        assert self._make_call is not None
        call = self._make_call()
        self._pool.submit(call)
        return self.follow(call.future, call)

    def follow(self, reply: asyncio.Future[Reply], call: Call | None = None) -> CallFuture:
        """Resolve from ``reply`` (a future the executor resolves)."""
        self._call = call
        self._reply = reply
        reply.add_done_callback(self._deliver)
        return self

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        if self._call is not None:
            self._pool.cancel(self._call)
        elif self._reply is not None:
            self._reply.cancel()
        return True

    def _deliver(self, reply: asyncio.Future[Reply]) -> None:
        if reply.cancelled():
            return
        exc = reply.exception()  # retrieved even when nobody waits any more (timed out)
        if self.done():
            return
        if exc is not None:
            if (isinstance(exc, WorkerCrashedError) and not exc.started and self._make_call is not None
                    and self._requeued < MAX_REQUEUES and not self._pool.closed):
                self._requeued += 1  # it never ran: run it elsewhere, at no cost to its retries
                asyncio.get_running_loop().call_soon(self._retry)
                return
            if (isinstance(exc, ExecutionError) and exc.retryable and self._attempt < self._retries
                    and self._make_call is not None):
                self._attempt += 1
                delay = min(5.0, 0.05 * 2**self._attempt) * random.uniform(0.5, 1.5)
                if self._events is not None:
                    self._events.emit("task-retried", call=self._label, attempt=self._attempt, reason=str(exc))
                asyncio.get_running_loop().call_later(delay, self._retry)
                return
            self.set_exception(exc)
            return
        ok, data = reply.result()
        if not ok:
            self.set_exception(self._rebuild(data))
            return
        try:
            value = loads(data)
        except Exception as err:
            self.set_exception(SerializationError(
                f"cannot unpickle the result of {self._label} here: {type(err).__name__}: {err}"
            ))
            return
        self.set_result(value)

    def _expire(self) -> None:
        """The timeout passed: stop the call wherever it is, and say so."""
        if self.done():
            return
        worker = self._pool.abort(self._call) if self._call is not None else None
        where = (f"; worker {worker} running it was stopped and is replaced" if worker
                 else "; it had not started and never will")
        self.set_exception(CallTimeoutError(f"{self._label} did not finish within {self._timeout:g} s{where}"))

    def _retry(self) -> None:
        if self.done():
            return
        try:
            self.start()
        except ExecutionError as exc:
            self.set_exception(exc)
