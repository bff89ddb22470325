"""What a worker is handed: an :class:`Attempt` at a call, the :class:`ReplyFuture`
it resolves, and the :class:`CallWatch` that follows it from outside the caller.

See the glossary in the package docstring: a call has one task id; each attempt at it
is one try on one executor.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from ..wire.serialization import short_repr


class ReplyFuture(asyncio.Future[Any]):
    """An attempt's future that hands its outcome to its one follower (:meth:`follow_now`)
    in the very call that sets it: a done-callback would run a turn of the event loop
    later, and the caller's task takes a turn more to wake. The follower (the pool) must
    accept being called from inside a worker's methods."""

    # Slots left unset until used (no __init__: one is made per attempt).
    __slots__ = ("_follower", "call")
    _follower: Callable[[ReplyFuture], None] | None
    call: Attempt  # the attempt it answers, where its maker records it

    def follow_now(self, follower: Callable[[ReplyFuture], None]) -> None:
        """Hand this future to ``follower`` once it is done (see the class docstring)."""
        if self.done():
            self.get_loop().call_soon(follower, self)
        else:
            self._follower = follower

    def set_result(self, result: Any, /) -> None:
        super().set_result(result)
        self._hand_over()

    def set_exception(self, exception: type | BaseException, /) -> None:
        super().set_exception(exception)
        self._hand_over()

    def cancel(self, msg: Any | None = None) -> bool:
        cancelled = super().cancel(msg)
        if cancelled:
            self._hand_over()
        return cancelled

    def _hand_over(self) -> None:
        follower, self._follower = getattr(self, "_follower", None), None
        if follower is not None:
            try:
                follower(self)
            except Exception as exc:  # reported as the loop reports a failing done-callback
                self.get_loop().call_exception_handler(
                    {"message": "a call's follower failed", "exception": exc, "future": self})


class CallWatch(Protocol):
    """Who follows a call from outside the caller (see
    :func:`microkernel.services.execution_manager.pool.watching`). Its methods run on the
    pool's event path: they must be quick and must not raise."""

    def sent(self, attempt: Attempt) -> None:
        """``attempt`` is about to reach its worker (called before it is handed over)."""

    def logged(self, attempt: Attempt, level: str, message: str, fields: Mapping[str, Any]) -> None:
        """The running attempt wrote a log line (``kernel.task.log``)."""


class Attempt:
    """One attempt at a call, as the pool hands it to a worker (see the glossary:
    ``id`` is the call's task id, ``attempt`` its number; ``repr`` names both).

    The worker resolves ``future`` with a reply ``(True, pickled_result)`` or
    ``(False, ErrorInfo)``, or sets an :class:`~kernel.errors.ExecutionError` on it.
    ``label`` and ``args`` only serve error messages; ``priority`` and ``project`` are
    the pool's (a worker may ignore them).
    """

    __slots__ = ("args", "attempt", "context", "future", "id", "kind", "label", "on_progress", "payload", "priority",
                 "progress", "project", "queued_at", "ran", "resources", "soft_timeout", "started", "timeout", "watch",
                 "worker_id")

    def __init__(
        self, id: int, kind: int, payload: bytes, future: asyncio.Future[Any],
        label: str = "call", args: tuple[Any, ...] = (), priority: int = 5,
        project: str | None = None, soft_timeout: float = 0.0,
        resources: Mapping[str, float] | None = None, *, attempt: int = 1, timeout: float | None = None,
        worker_id: str | None = None, on_progress: Callable[[float, str], None] | None = None,
        context: contextvars.Context | None = None, started: float = 0.0, watch: CallWatch | None = None,
    ) -> None:
        self.id = id  # the task id: the same for every attempt at one call
        self.attempt = attempt  # which attempt this is
        self.kind = kind
        self.payload = payload
        self.future = future
        self.label = label
        self.args = args
        self.priority = priority  # 0..10, higher first
        self.project = project
        self.soft_timeout = soft_timeout  # seconds; raised inside the call where the worker can
        self.resources = resources  # what it needs of a worker (None: anything)
        self.queued_at = 0.0
        self.started = started
        self.timeout = timeout  # the caller's limit for the whole call (shown, not enforced here)
        self.worker_id = worker_id  # set by the pool when it hands the call out
        self.progress: tuple[float, str] | None = None  # the latest the call reported
        self.on_progress = on_progress  # the caller's, if it listens
        self.ran: float | None = None  # seconds it ran, where the worker knows (see Worker.overhead)
        self.context = context  # the caller's (its structlog variables reach log lines)
        self.watch = watch  # who follows the call from outside (the job service), if anyone

    def __repr__(self) -> str:
        return f"<Attempt {self.attempt} of {self.describe()} on {self.worker_id or 'no worker yet'}>"

    def describe(self) -> str:
        return describe(self.label, self.args, self.id)

    def bound(self) -> dict[str, Any]:
        """The caller's structlog context variables, as they were when it made the call."""
        return bound(self.context)




def describe(label: str, args: tuple[Any, ...], task_id: int) -> str:
    """``label(args) [task N]``: how errors and log lines name a call."""
    shown = ", ".join(short_repr(a, 40) for a in args)
    return f"{label}({shown}) [task {task_id}]"


def bound(context: contextvars.Context | None) -> dict[str, Any]:
    """The structlog context variables bound in ``context`` (none: {})."""
    return dict(context.run(structlog.contextvars.get_contextvars)) if context is not None else {}
