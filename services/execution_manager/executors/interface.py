"""The worker interface: one place that runs calls (the contract; the bookkeeping the
built-ins share is :class:`.base.WorkerBase`).

A local worker process, an in-process thread, a remote node: the execution manager
sees only :class:`Worker`. Node types are registered by plugins through the
``em_executor_types`` hook; each plugin's tests run the one conformance kit
(:mod:`.testing`), which is what makes them interchangeable.

Errors a worker reports on a call (set on ``attempt.future``), all from
:mod:`..errors`: :class:`WorkerCrashedError` when it dies or disconnects with the
call in flight; :class:`PoolClosedError` when the call reaches it after stop. Errors
raised by the call itself are not exceptions here: they come back as a
``(False, ErrorInfo)`` reply for the manager to rebuild.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

# Attempt, CallWatch and ReplyFuture are part of this interface, re-exported for
# executor plugins that import them from here.
from .attempt import Attempt as Attempt, CallWatch as CallWatch, ReplyFuture as ReplyFuture
from .states import (
    ACCEPTING,
    CLOSED,
    TRANSITIONS,
    IllegalTransition,
    WorkerState as WorkerState,  # part of this interface
)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker reports about itself for stats and placement."""

    pid: int | None = None
    address: str | None = None
    width: int = 1  # calls it runs side by side (a multi-threaded worker's threads)
    exit_reason: str | None = None
    exit_code: int | None = None  # its process's, once ended (negative: killed by that signal)
    resources: Mapping[str, float] = field(default_factory=dict)  # what a call may ask of it
    node: str | None = None  # the remote node it runs on (None: this machine)
    # Remote executors report these (local ones are measured by the manager):
    cpu_percent: float | None = None  # its process
    rss: int | None = None  # its process, bytes
    host_cpu_percent: float | None = None  # the machine it runs on


class CallHost(Protocol):
    """What a worker hands a running call's traffic to (:mod:`kernel.task`): the
    execution manager in the kernel, the agent on a remote node."""

    def progress(self, attempt: Attempt, fraction: float, message: str) -> None:
        """``attempt`` reports progress."""

    def log(self, attempt: Attempt, level: str, message: str, fields: Mapping[str, Any]) -> None:
        """``attempt`` logs a line."""

    async def request(self, attempt: Attempt, route: str, payload: bytes) -> tuple[bool, bytes]:
        """``attempt`` asks the kernel; return ``(True, pickled answer)`` or ``(False,
        pickled exception)`` (never raise)."""


StateListener = Callable[["Worker", WorkerState, WorkerState], None]


class Worker(ABC):
    """One place that runs calls.

    Lifecycle: created (``CREATING``) -> :meth:`start` (``REGISTERING`` ->
    ``AVAILABLE``) -> calls (``AVAILABLE`` <-> ``RUNNING``) -> :meth:`stop`
    (``DRAINING`` -> ``TERMINATED``). A worker that dies on its own goes to
    ``FAILED`` and fails every call it held with :class:`WorkerCrashedError`.
    Every state change is reported to ``listeners``, which is how the pool learns of
    deaths; the pool never switches on a worker's type, only on these predicates.
    Each call ends by its future: a reply, an error, or cancelled when it was dropped
    before it began (:meth:`cancel`).
    """

    node_type: ClassVar[str] = ""
    #: Seconds each call spends in transit rather than working (a remote engine's
    #: scheduling round trip). The scheduler sends short calls ahead deep enough to
    #: overlap it. Kept up to date by the worker; 0 for workers whose transit is
    #: negligible. A worker that sets it also sets ``Attempt.ran`` (the seconds each
    #: call ran) before finishing it, as the pool's own timing would include transit.
    overhead: float = 0.0
    #: Whether a death fails the calls held exactly: ``WorkerCrashedError.started`` True
    #: only for those that had begun (the rest run elsewhere at no cost). False: every
    #: call held counts as begun, and runs again only where its retries allow.
    knows_begun: ClassVar[bool] = False

    def __init__(self, worker_id: str, options: Mapping[str, Any] | None = None) -> None:
        self.id = worker_id
        self.options: Mapping[str, Any] = options or {}
        self.state = WorkerState.CREATING
        self.listeners: list[StateListener] = []
        self.host: CallHost | None = None  # where running calls' progress, logs and requests go
        self.inflight: dict[int, Attempt] = {}
        self.done = 0
        self.failed = 0

    def __repr__(self) -> str:
        info = self.info()
        where = f" pid={info.pid}" if info.pid else (f" address={info.address}" if info.address else "")
        return (
            f"<{type(self).__name__} {self.id} {self.state.value}{where} "
            f"running={len(self.inflight)} done={self.done}>"
        )

    # -- the interface ----------------------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Start and register; return once calls can be submitted.

        :raises WorkerStartError: it could not start or did not register in time (the
            worker is then ``FAILED`` and holds no resources).
        """

    @abstractmethod
    async def stop(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop. With ``drain``, calls in flight finish first (within ``timeout``
        seconds, then it is stopped by force); without, they fail with
        :class:`WorkerCrashedError`. Ends ``TERMINATED``; idempotent.
        """

    @abstractmethod
    def submit(self, attempt: Attempt) -> None:
        """Start running ``attempt`` (never blocks); its outcome arrives on ``attempt.future``.

        Calls submitted to one worker start in submission order.

        :raises PoolClosedError: the worker is not accepting calls.
        """

    @abstractmethod
    def cancel(self, task_id: int) -> bool:
        """Drop a call that has not started; True if asked. Its future is cancelled once
        the drop is certain (at once where the worker can tell; a worker that must be
        asked confirms first); a call that had begun is not interrupted and ends as
        usual, so a call is never run twice by a cancel."""

    def abort(self, task_id: int, reason: str = "") -> bool:
        """Stop a call by force, running or not; True if it will not run on (or has
        been stopped). A running call may take its worker with it (a local worker
        process is ended and replaced) and fails with a ``WorkerCrashedError`` that
        includes ``reason``; calls held behind it fail too, each saying whether it
        had begun, so those that had not run elsewhere.

        Calls run in submission order, so a call held behind the running one is
        simply cancelled (:meth:`cancel`); the running one goes to :meth:`stop_running`."""
        if task_id not in self.inflight:
            return False
        if next(iter(self.inflight)) != task_id:
            return self.cancel(task_id)  # held behind the running call: it never starts
        return self.stop_running(task_id, reason or f"{self.inflight[task_id].describe()} was aborted")

    def stop_running(self, task_id: int, note: str) -> bool:
        """Stop the running call ``task_id`` by force (``note`` says why); True if it
        will be stopped. The default cannot stop a running call: it only tries
        :meth:`cancel`."""
        return self.cancel(task_id)

    def check_alive(self, status: str | None, timeout: float) -> str | None:
        """Judge, from outside, whether the worker still lives; the monitor calls it every
        sample with ``status``, its process's state as psutil reads it (None: no local
        process). A worker that finds its process stopped, a zombie, or silent while
        idle marks itself ``UNHEALTHY`` (no new calls) and, past ``timeout`` seconds,
        ends it (``FAILED``: its calls fail, or retry, under their policy) and returns
        why. It must not depend on the worker's own Python thread answering while a
        call runs (a call may hold the GIL). The default trusts the worker's own
        means (a remote node's heartbeats)."""
        return None

    async def tell(self, payload: bytes) -> list[tuple[bool, str]]:
        """Hand an operator's message (JSON bytes) to each instance pinned on this worker,
        between its calls, ahead of its queued ones; their answers in pin order: (True,
        the reply as JSON) or (False, why not). The default: this worker takes no messages.

        :raises WorkerConflictError: it takes no messages.
        :raises WorkerCrashedError: it ended before it answered.
        """
        from ..errors import WorkerConflictError  # (the interface module stays light)

        raise WorkerConflictError(f"worker {self.id} ({self.node_type}) does not take messages")

    @property
    def replaced_when_stopped(self) -> bool:
        """Whether whoever brought this worker starts another in its place once it is
        stopped, draining (a node replaces its slots): how the pool restarts a worker it
        did not start. The pool restarts its own workers itself; the default: no."""
        return False

    @classmethod
    def offers(cls, options: Mapping[str, Any]) -> Mapping[str, float] | None:
        """The resources a new worker made with ``options`` would offer, or None if
        it cannot be known before it starts (then no request is refused up front)."""
        return None

    def answer_frame(self, task_id: int) -> bytes | None:
        """The frame that carried the answer to ``task_id`` exactly as it came from the
        executing side, taken once, for a node to relay without decoding and encoding
        it again; None (the default) where there is none."""
        return None

    @abstractmethod
    def info(self) -> WorkerInfo:
        """Where it runs (pid or address), its width and, once ended, why it ended."""

    # -- predicates and state ---------------------------------------------------------

    @property
    def is_available(self) -> bool:
        return self.state in ACCEPTING

    @property
    def is_idle(self) -> bool:
        return self.state in ACCEPTING and not self.inflight

    @property
    def is_closed(self) -> bool:
        return self.state in CLOSED

    def set_state(self, new: WorkerState) -> None:
        """Move to ``new``; an illegal transition raises :class:`IllegalTransition`."""
        old = self.state
        if new == old:
            return
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"worker {self.id}: {old.value} -> {new.value} is not allowed")
        self.state = new
        for listener in list(self.listeners):
            listener(self, old, new)


#: What ``em_executor_types`` registers: a :class:`Worker` subclass, made as
#: ``factory(worker_id, options)``, whose class methods (:meth:`Worker.offers`) the
#: pool asks before any is made.
WorkerFactory = type[Worker]
