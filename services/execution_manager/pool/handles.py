"""What ``submit`` and ``@distributed`` calls return: an asyncio future, already placed.

Like Dask's ``client.submit`` and Ray's ``.remote()``, the call starts when it is made,
not when it is awaited, so ``asyncio.gather`` over thousands of calls costs no task
per call. Awaiting gives the result (or raises the call's exception). ``cancel()``
stops the call wherever it is: a queued call never runs; a running one has its worker
stopped and replaced.

The future decides nothing: the pool's scheduler (:mod:`..scheduling.scheduler`) owns the call, its
attempts, retries and time limits, and settles the future. The future carries what an
attempt needs (the pickled call, its :class:`..scheduling.stimuli.CallSpec`) and what the caller
reads: the attempts that failed, and progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import structlog

from ..errors import CallTimeoutError, PoolClosedError, RemoteError, WorkerCrashedError
from ..executors.attempt import Attempt, CallWatch, bound, describe
from ..scheduling.stimuli import CallSpec, Outcome, Resolve
from ..wire import loads

if TYPE_CHECKING:
    from ..executors import ErrorInfo

log = structlog.get_logger("execution-manager")
_watch: contextvars.ContextVar[CallWatch | None] = contextvars.ContextVar("call_watch", default=None)


@contextlib.contextmanager
def watching(watch: CallWatch) -> Iterator[None]:
    """Calls made inside the block report to ``watch``: each attempt just before it
    reaches a worker, and each log line it writes. A service that keeps calls' records
    elsewhere (the job service) follows them this way, whichever way it made them."""
    token = _watch.set(watch)
    try:
        yield
    finally:
        _watch.reset(token)


class Progress(NamedTuple):
    """How far a running call says it is (``kernel.task.progress``)."""

    fraction: float  # 0..1
    message: str


@dataclass(frozen=True)
class FailedAttempt:
    """One try at a call that ended in error: where it ran and how it ended."""

    number: int
    worker_id: str | None
    outcome: str


class RemoteTraceback(Exception):
    """Carries the worker's formatted traceback as the ``__cause__`` of a remote error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def rebuild(info: ErrorInfo) -> BaseException:
    """The exception a call raised, with its type where it unpickles here, and the
    remote traceback as its ``__cause__`` (as concurrent.futures does)."""
    exc: Any = None
    if info.exception is not None:
        try:
            exc = loads(info.exception)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(info.type_name, info.message, info.traceback)
    exc.__cause__ = RemoteTraceback(info.traceback)
    with contextlib.suppress(AttributeError):  # exceptions with __slots__
        exc.remote_traceback = info.traceback
    return exc  # type: ignore[no-any-return]


class Owner(Protocol):
    """What a :class:`CallFuture` needs of the pool that owns its call."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def cancel(self, fut: CallFuture) -> None:
        """The caller cancelled ``fut``."""


class CallFuture(asyncio.Future[Any]):
    """The result of one call, through its attempts. Await it, or ``cancel()`` it.

    ``task_id`` names the call everywhere (logs, errors, events) and stays the same
    across attempts. ``attempts`` records every attempt that ended in error (number,
    worker, reason). Progress the call reports (``kernel.task.progress``) is in
    :attr:`progress`, goes to callbacks given to :meth:`on_progress`, and comes out of
    ``async for update in handle.progress_updates()``.
    """

    def __init__(
        self, pool: Owner, spec: CallSpec, kind: int, payload: bytes, args: tuple[Any, ...] = (), *,
        retry_on: tuple[type[BaseException], ...] = (), soft_timeout: float = 0.0,
    ) -> None:
        super().__init__(loop=pool.loop)
        self._pool = pool
        self.spec = spec
        self.kind = kind
        self.payload = payload
        self.args = args
        self.retry_on = retry_on
        self.soft_timeout = soft_timeout
        self.attempts: list[FailedAttempt] = []
        self.context = contextvars.copy_context()  # the caller's structlog variables, for lines about the call
        watch = _watch.get()
        if watch is not None:
            self.watch = watch

    # Set on the instance when they change (one store fewer each, for every call).
    current: Attempt | None = None  # the attempt sent last, once one was sent
    answer: tuple[int, Any] | None = None  # (attempt, its reply or error), until settled
    watch: CallWatch | None = None  # see watching()
    revoked: str | None = None  # why it was revoked, once it was
    queued_at = 0.0  # when the pool took it (loop time), set there
    _progress: Progress | None = None
    _progress_callbacks: list[Callable[[Progress], None]] | None = None  # made when first needed
    _progress_queues: list[asyncio.Queue[Progress | None]] | None = None

    def __repr__(self) -> str:
        if self.done():
            state = "cancelled" if self.cancelled() else "failed" if self.exception() is not None else "done"
        elif self.current is None:
            state = "queued"
        else:
            state = f"attempt {self.current.attempt} on {self.current.worker_id}"
        return f"<CallFuture {self.describe()} {state}>"

    @property
    def task_id(self) -> int:
        return self.spec.task_id

    @property
    def label(self) -> str:
        return self.spec.label

    def bound(self) -> dict[str, Any]:
        """The caller's structlog context variables, as they were when it made the call."""
        return bound(self.context)

    def describe(self) -> str:
        """``label(args) [task N]``, as errors and log lines name the call."""
        return describe(self.spec.label, self.args, self.spec.task_id)

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self._pool.cancel(self)
        return True

    # -- progress ---------------------------------------------------------------------

    @property
    def progress(self) -> Progress | None:
        """The latest progress the call reported, or None."""
        return self._progress

    def on_progress(self, callback: Callable[[Progress], None]) -> Callable[[], None]:
        """Call ``callback(progress)`` on each report (on the event loop); returns a
        function that stops it. A report already in is given at once."""
        callbacks = self._progress_callbacks
        if callbacks is None:
            callbacks = self._progress_callbacks = []
        callbacks.append(callback)
        if self._progress is not None:
            callback(self._progress)
        return lambda: callbacks.remove(callback) if callback in callbacks else None

    async def progress_updates(self) -> AsyncIterator[Progress]:
        """Each progress report as it arrives (the latest one first, if any), until the
        call ends; its outcome is then had by awaiting the handle."""
        queue: asyncio.Queue[Progress | None] = asyncio.Queue()
        queues = self._progress_queues
        if queues is None:
            queues = self._progress_queues = []
        queues.append(queue)
        self.add_done_callback(lambda _f: queue.put_nowait(None))
        try:
            if self._progress is not None:
                yield self._progress
            while (update := await queue.get()) is not None:
                yield update
        finally:
            queues.remove(queue)

    def report_progress(self, fraction: float, message: str) -> None:
        """The running attempt reported progress (the pool calls this)."""
        if self.done():
            return
        update = self._progress = Progress(fraction, message)
        for callback in list(self._progress_callbacks or ()):
            try:
                callback(update)
            except Exception:  # a caller's callback must not break the pool's event path
                log.exception("progress callback failed", call=self.spec.label, task_id=self.spec.task_id)
        for queue in self._progress_queues or ():
            queue.put_nowait(update)


def error_for(fut: CallFuture, resolve: Resolve, given: BaseException | None, max_deaths: int) -> BaseException:
    """The error ``fut`` fails with, settled by ``resolve`` (``given``: the attempt's own)."""
    outcome, wid = resolve.outcome, resolve.worker_id
    if outcome is Outcome.TIMEOUT:
        return CallTimeoutError(f"{fut.describe()} did not finish within {fut.spec.timeout:g} s; "
                                f"worker {wid} running it was stopped and is replaced")
    if outcome is Outcome.EXPIRED:
        return CallTimeoutError(f"{fut.describe()} did not start within its deadline of "
                                f"{fut.spec.deadline:g} s and never will (all workers were busy)")
    if outcome is Outcome.CLOSED:
        return PoolClosedError(f"{fut.describe()} was cancelled before it ran: "
                               "the execution manager is shutting down")
    if resolve.gave_up:
        return WorkerCrashedError(f"{fut.describe()} was given up after killing {max_deaths} workers "
                                  f"(maxCallDeaths); last: {given or resolve.reason}", worker_id=wid or "",
                                  call=fut.describe())
    if given is not None:
        return given
    return WorkerCrashedError(f"{fut.describe()} was lost: {resolve.reason}", worker_id=wid or "",
                              call=fut.describe())
