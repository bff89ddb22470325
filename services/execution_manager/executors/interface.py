"""The worker interface: one place that runs calls.

A local worker process, an in-process thread, a remote node: the execution manager
sees only :class:`Worker`. Node types are registered by plugins through the
``em_executor_types`` hook; each plugin's tests run the one conformance suite
(``tests/conformance.py``), which is what makes them interchangeable.

Errors a worker reports on a call (set on ``call.future``), all from
:mod:`.errors`: :class:`WorkerCrashedError` when it dies or disconnects with the
call in flight; :class:`PoolClosedError` when the call reaches it after stop. Errors
raised by the call itself are not exceptions here: they come back as a
``(False, ErrorInfo)`` reply for the manager to rebuild.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import structlog

from kernel.errors import RequestError

from ..errors import PoolClosedError, WorkerCrashedError
from ..wire import dumps
from ..wire.protocol import Log, Progress, Request

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

_log = structlog.get_logger("executor")


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

    def progress(self, call: Attempt, fraction: float, message: str) -> None:
        """``call`` reports progress."""

    def log(self, call: Attempt, level: str, message: str, fields: Mapping[str, Any]) -> None:
        """``call`` logs a line."""

    async def request(self, call: Attempt, route: str, payload: bytes) -> tuple[bool, bytes]:
        """``call`` asks the kernel; return ``(True, pickled answer)`` or ``(False,
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
    def submit(self, call: Attempt) -> None:
        """Start running ``call`` (never blocks); its outcome arrives on ``call.future``.

        Calls submitted to one worker start in submission order.

        :raises PoolClosedError: the worker is not accepting calls.
        """

    @abstractmethod
    def cancel(self, call_id: int) -> bool:
        """Drop a call that has not started; True if asked. Its future is cancelled once
        the drop is certain (at once where the worker can tell; a worker that must be
        asked confirms first); a call that had begun is not interrupted and ends as
        usual, so a call is never run twice by a cancel."""

    def abort(self, call_id: int, reason: str = "") -> bool:
        """Stop a call by force, running or not; True if it will not run on (or has
        been stopped). A running call may take its worker with it (a local worker
        process is ended and replaced) and fails with a ``WorkerCrashedError`` that
        includes ``reason``; calls held behind it fail too, each saying whether it
        had begun, so those that had not run elsewhere.

        Calls run in submission order, so a call held behind the running one is
        simply cancelled (:meth:`cancel`); the running one goes to :meth:`_stop_running`."""
        if call_id not in self.inflight:
            return False
        if next(iter(self.inflight)) != call_id:
            return self.cancel(call_id)  # held behind the running call: it never starts
        return self._stop_running(call_id, reason or f"{self.inflight[call_id].describe()} was aborted")

    def _stop_running(self, call_id: int, note: str) -> bool:
        """Stop the running call ``call_id`` by force (``note`` says why); True if it
        will be stopped. The default cannot stop a running call: it only tries
        :meth:`cancel`."""
        return self.cancel(call_id)

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

    @classmethod
    def offers(cls, options: Mapping[str, Any]) -> Mapping[str, float] | None:
        """The resources a new worker made with ``options`` would offer, or None if
        it cannot be known before it starts (then no request is refused up front)."""
        return None

    def answer_frame(self, call_id: int) -> bytes | None:
        """The frame that carried the answer to ``call_id`` exactly as it came from the
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

    def _check_accepting(self, *, connected: bool = True, where: str = "") -> None:
        """Helper for ``submit``, so that it can send a call before :meth:`_hold`'s
        bookkeeping (the worker starts on it meanwhile).

        :raises PoolClosedError: not accepting calls, or not ``connected``.
        """
        if self.state not in ACCEPTING or not connected:
            raise PoolClosedError(f"worker {self.id}{where} is {self.state.value} and takes no calls")

    def _accept(self, call: Attempt, *, connected: bool = True, where: str = "") -> None:
        """Take ``call`` in (helper for ``submit``): it counts as held from now on.

        :raises PoolClosedError: not accepting calls, or not ``connected``.
        """
        self._check_accepting(connected=connected, where=where)
        self._hold(call)

    def _hold(self, call: Attempt) -> None:
        """Count ``call`` as held (after :meth:`_check_accepting`)."""
        self.inflight[call.id] = call
        if self.state == WorkerState.AVAILABLE:
            self.set_state(WorkerState.RUNNING)

    def _settle(self, call: Attempt, ok: bool) -> None:
        self.inflight.pop(call.id, None)
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if not self.inflight and self.state == WorkerState.RUNNING:
            self.set_state(WorkerState.AVAILABLE)

    def _fail(self, call: Attempt, exc: BaseException) -> None:
        """End ``call`` with ``exc`` (helper for implementations; keeps counts and state)."""
        self._settle(call, False)
        if not call.future.done():
            call.future.set_exception(exc)

    def _finish(self, call: Attempt, reply: Any) -> None:
        """Resolve ``call`` (helper for implementations; keeps counts and state)."""
        self._settle(call, reply[0])
        if not call.future.done():
            call.future.set_result(reply)

    def _cancel_from(self, queue: deque[Attempt], call_id: int) -> bool:
        """Drop a call still waiting in ``queue`` (helper for ``cancel``)."""
        for call in queue:
            if call.id == call_id:
                queue.remove(call)
                self._drop(call_id)
                return True
        return False

    def report_traffic(self, message: Progress | Log | Request, respond: Callable[[int, bool, bytes], None]) -> None:
        """Hand a running call's progress, log line or request (typed, as
        :mod:`microkernel.services.execution_manager.wire.protocol` decodes them) to
        :attr:`host` (helper for implementations). A request is answered through
        ``respond(request_id, ok, payload)``, also when there is no host or the call is
        gone, so the asking call never waits forever."""
        call = self.inflight.get(message.call_id)
        host = self.host
        if type(message) is Request:
            request_id, route = message.request_id, message.route
            if call is None or host is None:
                why = "its call is no longer running" if call is None else f"worker {self.id} has no kernel"
                respond(request_id, False, dumps(RequestError(f"request {route!r} refused: {why}")))
                return
            task = asyncio.get_running_loop().create_task(host.request(call, str(route), message.payload))
            task.add_done_callback(lambda t: respond(request_id, *_answer(t, route)))
            return
        if call is None or host is None:
            return  # late: the call was given up
        try:
            if type(message) is Progress:
                host.progress(call, float(message.fraction), str(message.message))
            elif type(message) is Log:
                host.log(call, str(message.level), str(message.message),
                         message.fields if isinstance(message.fields, dict) else {})
        except Exception:  # a listener's bug must not take the worker's connection down
            _log.exception("handling a call's progress or log failed", worker_id=self.id, call=call.describe())

    def _drop(self, call_id: int) -> Attempt | None:
        """Forget a call that will not run (helper for ``cancel``)."""
        call = self.inflight.pop(call_id, None)
        if call is None:
            return None
        if not self.inflight and self.state == WorkerState.RUNNING:
            self.set_state(WorkerState.AVAILABLE)
        call.future.cancel()
        return call

    def _begin_stop(self) -> bool:
        """Start :meth:`stop`: False if already ``TERMINATED``; else take no new calls."""
        if self.state == WorkerState.TERMINATED:
            return False
        if self.state in (WorkerState.AVAILABLE, WorkerState.RUNNING, WorkerState.UNHEALTHY):
            self.set_state(WorkerState.DRAINING)
        return True

    async def _let_finish(self, drain: bool, timeout: float) -> None:
        """With ``drain``, wait up to ``timeout`` seconds for the calls in flight
        (helper for ``stop``)."""
        if drain and self.inflight:
            await asyncio.wait([c.future for c in self.inflight.values()], timeout=timeout)

    def _fail_stopped(self, never_started: set[int], *, where: str = "", pid: int | None = None) -> None:
        """Fail every call still held because the worker was stopped (helper for
        ``stop``); ``never_started``: the ids of those that had not begun."""
        self._fail_all(lambda c, _first: WorkerCrashedError(
            f"worker {self.id}{where} was stopped "
            f"{'before starting' if c.id in never_started else 'while running'} {c.describe()}",
            worker_id=self.id, pid=pid, call=c.describe(), started=c.id not in never_started,
        ))

    def _crash_all(self, where: str, how: str, *, pid: int | None, exitcode: int | None,
                   started: Callable[[Attempt], bool] | None = None, exact: bool = False) -> None:
        """Fail every call held with :class:`WorkerCrashedError` ("{where} {how} while
        running / before starting {call}"). ``started(call)`` says whether a call may
        have begun (without it every call held may have: see :meth:`_fail_all`);
        ``exact``: it says for certain, calls beginning one after another in the order
        held (so the last begun was running, those before it had run)."""
        held = list(self.inflight)
        began = [c for c in held if started(self.inflight[c])] if started is not None else held
        running = (began[-1] if exact else began[0]) if began else None

        def crashed(c: Attempt, begun: bool) -> WorkerCrashedError:
            if not begun:
                when = "before starting"
            elif c.id == running:
                when = "while running"
            elif exact:
                when = "after running (its answer was lost with it)"
            else:
                when = "while holding (it may have started)"
            return WorkerCrashedError(
                f"{where} {how} {when} {c.describe()}", worker_id=self.id, pid=pid,
                exitcode=exitcode, call=c.describe(), started=begun,
            )

        self._fail_all(crashed, started)

    def _fail_all(self, exc_factory: Callable[[Attempt, bool], BaseException],
                  started: Callable[[Attempt], bool] | None = None) -> None:
        """Fail every call held; ``exc_factory(call, started)``. Unless ``started`` tells
        otherwise, each call held counts as begun: a worker may run one call after
        another before its replies reach us, so the oldest held is not the only one
        that may have run, and a call that may have run is never run again unasked.
        Call it only once the worker no longer accepts calls."""
        calls = list(self.inflight.values())
        self.inflight.clear()
        for call in calls:
            exc = exc_factory(call, True if started is None else started(call))
            self.failed += 1
            if not call.future.done():
                call.future.set_exception(exc)


def _answer(task: asyncio.Task[tuple[bool, bytes]], route: str) -> tuple[bool, bytes]:
    if task.cancelled():
        return False, dumps(RequestError(f"request {route!r} was cancelled: the kernel is stopping"))
    exc = task.exception()
    if exc is not None:
        return False, dumps(RequestError(f"request {route!r} failed in the kernel: {type(exc).__name__}: {exc}"))
    return task.result()


#: What ``em_executor_types`` registers: a :class:`Worker` subclass, made as
#: ``factory(worker_id, options)``, whose class methods (:meth:`Worker.offers`) the
#: pool asks before any is made.
WorkerFactory = type[Worker]
