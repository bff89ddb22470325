"""What ``submit`` and ``@distributed`` calls return: an asyncio future, already placed.

Like Dask's ``client.submit`` and Ray's ``.remote()``, the call starts when it is made,
not when it is awaited, so ``asyncio.gather`` over thousands of calls costs no task
per call. Awaiting gives the result (or raises the call's exception). ``cancel()``
stops the call wherever it is: a queued call never runs; a running one has its worker
stopped and replaced.

The future also carries the call's delivery rules (:class:`CallOptions`): retries with
backoff, a timeout, a queue deadline, and a bound on how many workers it may kill.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

from kernel.errors import ExecutionError

from .errors import CallTimeoutError, SerializationError, WorkerCrashedError
from .executor import Call, ReplyFuture
from .runtime import Reply
from .serialization import format_exception, loads, type_name

if TYPE_CHECKING:
    from .events import EventBus
    from .pool import WorkerPool

log = structlog.get_logger("execution-manager")
Rebuild = Callable[[Any], BaseException]
MAX_REQUEUES = 10  # a call whose workers keep dying before it starts still ends


class Progress(NamedTuple):
    """How far a running call says it is (``kernel.task.progress``)."""

    fraction: float  # 0..1
    message: str


class CallOptions(NamedTuple):
    """How one call is delivered. The defaults are at-most-once with no time limits."""

    retries: int = 0  # further attempts after a worker death or a ``retry_on`` error
    retry_on: tuple[type[BaseException], ...] = ()  # exception types worth another attempt
    timeout: float | None = None  # seconds for the whole call, all attempts included
    deadline: float | None = None  # seconds the call may wait before it starts
    max_deaths: int = 3  # workers it may kill before it is given up for good


@dataclass(frozen=True)
class Attempt:
    """One try at a call: where it ran and how it ended."""

    number: int
    worker_id: str | None
    outcome: str


NO_OPTIONS = CallOptions()


def _cancel_all(timers: list[asyncio.TimerHandle]) -> None:
    for timer in timers:
        timer.cancel()


class CallFuture(asyncio.Future[Any]):
    """The result of one call, through its attempts. Await it, or ``cancel()`` it.

    ``attempts`` records every attempt that ended in error (number, worker, reason).
    Progress the call reports (``kernel.task.progress``) is in :attr:`progress`, goes
    to callbacks given to :meth:`on_progress`, and comes out of
    ``async for update in handle.progress_updates()``.
    """

    def __init__(
        self, pool: WorkerPool, rebuild: Rebuild, *, label: str = "call",
        make_call: Callable[[], Call] | None = None, options: CallOptions = NO_OPTIONS,
        events: EventBus | None = None,
    ) -> None:
        super().__init__(loop=asyncio.get_running_loop())
        self._pool = pool
        self._rebuild = rebuild
        self._label = label
        self._make_call = make_call
        self._options = options
        self._events = events
        self._call: Call | None = None
        self._reply: asyncio.Future[Reply] | None = None
        self._requeued = 0
        self.attempts: list[Attempt] = []
        self._progress: Progress | None = None
        self._progress_callbacks: list[Callable[[Progress], None]] = []
        self._progress_queues: list[asyncio.Queue[Progress | None]] = []
        if options.timeout is not None or options.deadline is not None:
            loop = self.get_loop()
            timers = [
                loop.call_later(delay, expire)
                for delay, expire in ((options.timeout, self._expire), (options.deadline, self._missed_start))
                if delay is not None
            ]
            self.add_done_callback(lambda _f: _cancel_all(timers))

    def start(self) -> CallFuture:
        """Make and place the call (or its next attempt)."""
        assert self._make_call is not None
        call = self._make_call()
        call.timeout = self._options.timeout
        self._pool.submit(call)
        return self.follow(call.future, call)

    def follow(self, reply: asyncio.Future[Reply], call: Call | None = None) -> CallFuture:
        """Resolve from ``reply`` (a future the executor resolves)."""
        self._call = call
        self._reply = reply
        if call is not None:
            call.on_progress = self._on_progress
        if isinstance(reply, ReplyFuture):
            reply.follow_now(self._deliver)
        else:
            reply.add_done_callback(self._deliver)
        return self

    # -- progress ---------------------------------------------------------------------

    @property
    def progress(self) -> Progress | None:
        """The latest progress the call reported, or None."""
        return self._progress

    def on_progress(self, callback: Callable[[Progress], None]) -> Callable[[], None]:
        """Call ``callback(progress)`` on each report (on the event loop); returns a
        function that stops it. A report already in is given at once."""
        self._progress_callbacks.append(callback)
        if self._progress is not None:
            callback(self._progress)
        return lambda: self._progress_callbacks.remove(callback) if callback in self._progress_callbacks else None

    async def progress_updates(self) -> AsyncIterator[Progress]:
        """Each progress report as it arrives (the latest one first, if any), until the
        call ends; its outcome is then had by awaiting the handle."""
        queue: asyncio.Queue[Progress | None] = asyncio.Queue()
        self._progress_queues.append(queue)
        self.add_done_callback(lambda _f: queue.put_nowait(None))
        try:
            if self._progress is not None:
                yield self._progress
            while (update := await queue.get()) is not None:
                yield update
        finally:
            self._progress_queues.remove(queue)

    def _on_progress(self, fraction: float, message: str) -> None:
        if self.done():
            return
        update = self._progress = Progress(fraction, message)
        for callback in list(self._progress_callbacks):
            try:
                callback(update)
            except Exception:  # a caller's callback must not break the pool's event path
                log.exception("progress callback failed", call=self._label)
        for queue in self._progress_queues:
            queue.put_nowait(update)

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        if self._call is not None:
            self._pool.abort(self._call)
        elif self._reply is not None:
            self._reply.cancel()
        return True

    # -- outcomes ---------------------------------------------------------------------

    def _deliver(self, reply: asyncio.Future[Reply]) -> None:
        if reply.cancelled():
            return
        exc = reply.exception()  # retrieved even when nobody waits any more (timed out)
        if self.done():
            return
        if exc is None:
            ok, data = reply.result()
            if ok:
                self._succeed(data)
                return
            exc = self._rebuild(data)
        self._failed(exc)

    def _succeed(self, data: bytes) -> None:
        try:
            value = loads(data)
        except Exception as err:
            self.set_exception(SerializationError(
                f"cannot unpickle the result of {self._label} here: {type(err).__name__}: {err}"
            ))
            return
        self.set_result(value)

    def _failed(self, exc: BaseException) -> None:
        opts = self._options
        worker = self._call.worker_id if self._call is not None else None
        crashed = isinstance(exc, WorkerCrashedError)
        never_ran = isinstance(exc, WorkerCrashedError) and not exc.started
        if never_ran and self._can_retry() and self._requeued < MAX_REQUEUES:
            self._requeued += 1  # it never ran: run it elsewhere, at no cost to its retries
            self.get_loop().call_soon(self._retry)
            return
        self.attempts.append(Attempt(len(self.attempts) + 1, worker, f"{type(exc).__name__}: {exc}"))
        deaths = sum(1 for a in self.attempts if a.outcome.startswith("WorkerCrashedError"))
        retryable = (crashed or (isinstance(exc, ExecutionError) and exc.retryable)
                     or isinstance(exc, opts.retry_on))
        if crashed and deaths >= opts.max_deaths and opts.retries:
            self.set_exception(WorkerCrashedError(
                f"{self._label} was given up after killing {deaths} workers (maxCallDeaths); "
                f"last: {exc}", worker_id=worker or "", call=self._label,
            ))
            return
        if retryable and len(self.attempts) <= opts.retries and self._can_retry():
            delay = min(5.0, 0.05 * 2 ** len(self.attempts)) * random.uniform(0.5, 1.5)
            if self._events is not None:
                self._events.emit("task-retried", call=self._label, attempt=len(self.attempts),
                                  worker_id=worker, reason=str(exc))
            self.get_loop().call_later(delay, self._retry)
            return
        if len(self.attempts) > 1:
            exc.add_note("attempts:\n" + "\n".join(
                f"  {a.number}. on {a.worker_id or '?'}: {a.outcome}" for a in self.attempts))
        if self._events is not None and self._events.wants("task-failed"):
            self._events.emit("task-failed", call=self._label, worker_id=worker, attempts=len(self.attempts),
                              error=f"{type_name(exc)}: {exc}",
                              traceback=getattr(exc, "remote_traceback", None) or format_exception(exc))
        self.set_exception(exc)

    def _can_retry(self) -> bool:
        return self._make_call is not None and not self._pool.closed

    def _retry(self) -> None:
        if self.done():
            return
        try:
            self.start()
        except ExecutionError as exc:
            self.set_exception(exc)

    # -- time limits ------------------------------------------------------------------

    def _expire(self) -> None:
        """The timeout passed: stop the call wherever it is, and say so."""
        if self.done():
            return
        worker = self._pool.abort(self._call) if self._call is not None else None
        where = (f"; worker {worker} running it was stopped and is replaced" if worker
                 else "; it had not started and never will")
        self.set_exception(CallTimeoutError(
            f"{self._label} did not finish within {self._options.timeout:g} s{where}"
        ))

    def _missed_start(self) -> None:
        """The queue deadline passed: a call still waiting fails without ever running."""
        if self.done() or self._call is None or not self._pool.withdraw(self._call):
            return  # it started (or ended) in time
        self.set_exception(CallTimeoutError(
            f"{self._label} did not start within its deadline of {self._options.deadline:g} s "
            "and never will (all workers were busy)"
        ))
