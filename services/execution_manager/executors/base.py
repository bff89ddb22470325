"""The bookkeeping the built-in workers share, apart from the contract they implement
(:class:`.interface.Worker`): a plugin may subclass :class:`WorkerBase` for it, or
implement the interface alone."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from kernel.errors import RequestError

from ..errors import PoolClosedError, WorkerCrashedError
from ..wire import dumps
from ..wire.protocol import Log, Progress, Request
from .attempt import Attempt
from .interface import Worker
from .states import ACCEPTING, WorkerState

_log = structlog.get_logger("executor")


class WorkerBase(Worker):
    """:class:`Worker` with the helpers its implementations call: taking calls in
    (``_check_accepting``, then ``_hold``), ending them (``_finish``, ``_fail``,
    ``_drop``, ``_cancel_from``), handing a running call's traffic to the pool
    (``report_traffic``), and stopping (``_begin_stop``, ``_let_finish``,
    ``_fail_stopped``, ``_crash_all``, ``_fail_all``). Each keeps the counts and the
    state right."""

    def _check_accepting(self, *, connected: bool = True, where: str = "") -> None:
        """Helper for ``submit``, first: the worker takes calls. Then :meth:`_hold` counts
        the attempt as held (a worker that sends it away may send it first, so that the
        far side starts on it during the bookkeeping).

        :raises PoolClosedError: not accepting calls, or not ``connected``.
        """
        if self.state not in ACCEPTING or not connected:
            raise PoolClosedError(f"worker {self.id}{where} is {self.state.value} and takes no calls")

    def _hold(self, attempt: Attempt) -> None:
        """Count ``attempt`` as held (after :meth:`_check_accepting`)."""
        self.inflight[attempt.id] = attempt
        if self.state == WorkerState.AVAILABLE:
            self.set_state(WorkerState.RUNNING)

    def _settle(self, attempt: Attempt, ok: bool) -> None:
        self.inflight.pop(attempt.id, None)
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if not self.inflight and self.state == WorkerState.RUNNING:
            self.set_state(WorkerState.AVAILABLE)

    def _fail(self, attempt: Attempt, exc: BaseException) -> None:
        """End ``attempt`` with ``exc`` (helper for implementations; keeps counts and state)."""
        self._settle(attempt, False)
        if not attempt.future.done():
            attempt.future.set_exception(exc)

    def _finish(self, attempt: Attempt, reply: Any) -> None:
        """Resolve ``attempt`` (helper for implementations; keeps counts and state)."""
        self._settle(attempt, reply[0])
        if not attempt.future.done():
            attempt.future.set_result(reply)

    def _cancel_from(self, queue: deque[Attempt], task_id: int) -> bool:
        """Drop a call still waiting in ``queue`` (helper for ``cancel``)."""
        for call in queue:
            if call.id == task_id:
                queue.remove(call)
                self._drop(task_id)
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

    def _drop(self, task_id: int) -> Attempt | None:
        """Forget a call that will not run (helper for ``cancel``)."""
        call = self.inflight.pop(task_id, None)
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

    # -- messages (tell) ---------------------------------------------------------------

    _asked: dict[int, asyncio.Future[list[tuple[bool, str]]]] | None = None  # made on first use
    _ask_ids: Iterator[int] | None = None

    async def _ask(self, send: Callable[[int], None]) -> list[tuple[bool, str]]:
        """Helper for ``tell``: number the message, ``send(request_id)`` it, and await the
        answer :meth:`_answered` gives (or the error :meth:`_unanswered` gives). Numbers
        are never reused, so a late answer to a message given up finds nobody."""
        if self._asked is None or self._ask_ids is None:
            self._asked, self._ask_ids = {}, itertools.count(1)
        asked = self._asked
        request_id = next(self._ask_ids)
        answer: asyncio.Future[list[tuple[bool, str]]] = asyncio.get_running_loop().create_future()
        asked[request_id] = answer
        send(request_id)
        try:
            return await answer
        finally:
            asked.pop(request_id, None)

    def _answered(self, request_id: int, replies: list[tuple[bool, str]]) -> None:
        """The far side answered message ``request_id`` (a late answer is dropped)."""
        answer = self._asked.get(request_id) if self._asked is not None else None
        if answer is not None and not answer.done():
            answer.set_result(replies)

    def _unanswered(self, why: str) -> None:
        """The worker ended: the messages it had not answered fail with ``why``."""
        for answer in (self._asked or {}).values():
            if not answer.done():
                answer.set_exception(WorkerCrashedError(f"worker {self.id} {why} before it answered a message",
                                                        worker_id=self.id))

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
