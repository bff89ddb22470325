"""The checks of the executor conformance suite (see the package docstring)."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kernel.errors import RequestError

from ...errors import PoolClosedError, WorkerCrashedError
from ...wire import dumps, loads, protocol as p
from ..attempt import Attempt
from ..interface import Executor, WorkerState
from .targets import Accumulator, chatty, chatty_async, exit_after, fail, unpicklable_result

Make = Callable[[str], Executor]
_ids = itertools.count(1)


def call(kind: int, payload: Any, label: str = "check") -> Attempt:
    loop = asyncio.get_running_loop()
    return Attempt(next(_ids), kind, dumps(payload), loop.create_future(), label)


async def reply(ex: Executor, c: Attempt, timeout: float = 10.0) -> tuple[bool, Any]:
    ex.submit(c)
    async with asyncio.timeout(timeout):
        result: tuple[bool, Any] = await c.future
    return result


async def started(make: Make) -> Executor:
    ex = make(f"check-{next(_ids)}")
    await ex.start()
    return ex


async def check_lifecycle(make: Make) -> None:
    ex = make("check-life")
    seen: list[tuple[WorkerState, WorkerState]] = []
    ex.listeners.append(lambda _e, old, new: seen.append((old, new)))
    assert (ex.state, ex.is_available) == (WorkerState.CREATING, False), ex
    await ex.start()
    assert (ex.is_available, ex.is_idle, ex.is_closed) == (True, True, False), ex
    assert "check-life" in repr(ex) and "available" in repr(ex)
    await ex.stop()
    await ex.stop()  # idempotent
    assert ex.is_closed and ex.state == WorkerState.TERMINATED
    states = [new for _old, new in seen]
    assert states[:2] == [WorkerState.REGISTERING, WorkerState.AVAILABLE]
    assert states[-1] == WorkerState.TERMINATED


async def check_runs_a_function(make: Make) -> None:
    ex = await started(make)
    try:
        ok, data = await reply(ex, call(p.CALL_FN, (pow, (2, 10), {})))
        assert ok and loads(data) == 1024
        assert ex.done == 1 and ex.is_idle and ex.state == WorkerState.AVAILABLE
    finally:
        await ex.stop()


async def check_error_reply(make: Make) -> None:
    ex = await started(make)
    try:
        ok, info = await reply(ex, call(p.CALL_FN, (fail, ("bad input",), {})))
        assert not ok
        assert info.type_name == "ValueError" and info.message == "bad input"
        assert "in fail" in info.traceback and ex.id in info.traceback
        exc = loads(info.exception)
        assert isinstance(exc, ValueError) and str(exc) == "bad input"
        assert ex.failed == 1 and ex.is_available
    finally:
        await ex.stop()


async def check_pinned_state_in_order(make: Make) -> None:
    ex = await started(make)
    try:
        ok, _ = await reply(ex, call(p.PIN, ("k1", Accumulator())))
        assert ok
        calls = [call(p.CALL_PINNED, ("k1", "add", (i,), {})) for i in range(20)]
        for c in calls:
            ex.submit(c)
        results = [loads((await c.future)[1]) for c in calls]
        assert results == list(range(1, 21))
        ok, data = await reply(ex, call(p.UNPIN, "k1"))
        assert ok and loads(data).items == list(range(20))
        ok, info = await reply(ex, call(p.CALL_PINNED, ("k1", "add", (1,), {})))
        assert not ok and info.type_name == "microkernel.services.execution_manager.errors.InstanceLostError"
    finally:
        await ex.stop()


async def check_missing_method(make: Make) -> None:
    ex = await started(make)
    try:
        await reply(ex, call(p.PIN, ("k2", Accumulator())))
        ok, info = await reply(ex, call(p.CALL_PINNED, ("k2", "nope", (), {})))
        assert not ok and info.type_name == "microkernel.services.execution_manager.errors.MethodNotFoundError"
        assert "has no method 'nope'" in info.message and ex.id in info.message
    finally:
        await ex.stop()


async def check_unpicklable_result_keeps_executor(make: Make) -> None:
    ex = await started(make)
    try:
        ok, info = await reply(ex, call(p.CALL_FN, (unpicklable_result, (), {}), "unpicklable_result"))
        assert not ok and info.type_name == "microkernel.services.execution_manager.errors.SerializationError"
        assert "result of unpicklable_result" in info.message and "_thread.lock" in info.message
        ok, data = await reply(ex, call(p.CALL_FN, (abs, (-3,), {})))
        assert ok and loads(data) == 3
    finally:
        await ex.stop()


async def check_drain_on_stop(make: Make) -> None:
    ex = await started(make)
    c = call(p.CALL_FN, (time.sleep, (0.3,), {}))
    ex.submit(c)
    await ex.stop(drain=True, timeout=5)
    ok, _ = c.future.result()
    assert ok and ex.state == WorkerState.TERMINATED


async def check_refuses_after_stop(make: Make) -> None:
    ex = await started(make)
    await ex.stop()
    try:
        ex.submit(call(p.CALL_FN, (abs, (1,), {})))
    except PoolClosedError as exc:
        assert ex.id in str(exc)
    else:
        raise AssertionError("submit after stop must raise PoolClosedError")


async def check_cancel_queued(make: Make) -> None:
    ex = await started(make)
    try:
        slow = call(p.CALL_FN, (time.sleep, (0.3,), {}))
        queued = call(p.CALL_FN, (fail, ("must never run",), {}))
        ex.submit(slow)
        ex.submit(queued)
        await asyncio.sleep(0.05)
        # Either the executor drops it (its future ends cancelled once that is certain, and
        # it never runs), or it says it cannot (it may have begun: it then ends as usual).
        # Never both: a cancel must not run a call twice nor lose it.
        dropped = ex.cancel(queued.id)
        async with asyncio.timeout(10):
            ok, _ = await slow.future
            if dropped:
                try:
                    await queued.future
                except asyncio.CancelledError:
                    pass
                else:
                    raise AssertionError("cancel() said it dropped the call, and the call ran")
            else:
                assert (await queued.future)[0] is False  # it ran: fail() raised
        ok2, data = await reply(ex, call(p.CALL_FN, (abs, (-5,), {})))
        assert ok and ok2 and loads(data) == 5
        assert ex.failed == (0 if dropped else 1) and ex.is_idle
    finally:
        await ex.stop()


async def check_async_method(make: Make) -> None:
    ex = await started(make)
    try:
        await reply(ex, call(p.PIN, ("k3", Accumulator())))
        for expected in (1, 2):
            ok, data = await reply(ex, call(p.CALL_PINNED, ("k3", "add_async", (7,), {})))
            assert ok and loads(data) == expected
    finally:
        await ex.stop()


class Recorder:
    """A real :class:`~microkernel.services.execution_manager.executors.CallHost`: records progress and logs, serves the
    ``echo`` route, refuses others (as the execution manager would)."""

    def __init__(self) -> None:
        self.progress_seen: list[tuple[int, float, str]] = []
        self.logs: list[tuple[int, str, str, dict[str, Any]]] = []

    def progress(self, call: Attempt, fraction: float, message: str) -> None:
        self.progress_seen.append((call.id, fraction, message))

    def log(self, call: Attempt, level: str, message: str, fields: Any) -> None:
        self.logs.append((call.id, level, message, dict(fields)))

    async def request(self, call: Attempt, route: str, payload: bytes) -> tuple[bool, bytes]:
        args, kwargs = loads(payload)
        if route != "echo":
            return False, dumps(RequestError(f"unknown route {route!r}"))
        await asyncio.sleep(0)
        return True, dumps((args, kwargs))


async def check_call_traffic(make: Make) -> None:
    """A running call's progress, logs and requests reach the executor's host; the
    request blocks neither the executor nor the call queued behind it."""
    ex = make(f"check-{next(_ids)}")
    host = ex.host = Recorder()
    await ex.start()
    try:
        first = call(p.CALL_FN, (chatty, (3,), {}))
        behind = call(p.CALL_FN, (chatty_async, (4,), {}))
        ex.submit(first)
        ok, data = await reply(ex, behind, timeout=20)
        assert ok, data
        assert loads(data) == ((4,), {})
        ok, data = await first.future
        assert ok, data
        echoed, refused = loads(data).split("|")
        assert echoed == "((3,), {'tag': 'x'})" and "unknown route 'missing'" in refused
        assert [(c, f) for c, f, _ in host.progress_seen] == [
            (first.id, 1 / 3), (first.id, 2 / 3), (first.id, 1.0), (behind.id, 0.5)
        ], host.progress_seen
        assert host.logs == [(first.id, "warning", "chatty done", {"steps": 3})]
        assert ex.is_idle and ex.failed == 0
    finally:
        await ex.stop()


async def check_death_fails_each_call_it_took_with_its_own_error(make: Make) -> None:
    """For executors whose worker is another process: it dies with a call running on
    every thread and more held. Each call it took fails with a WorkerCrashedError that
    names that call; those running count as begun (and, where the executor
    ``knows_begun``, only those); a call answered before is never reported crashed;
    the executor ends FAILED and takes no more calls."""
    ex = await started(make)
    try:
        answered = call(p.CALL_FN, (abs, (-1,), {}), "answered")
        assert (await reply(ex, answered))[0] is True
        width = max(1, ex.info().width)
        running = [call(p.CALL_FN, (time.sleep, (3.0,), {}), f"running-{i}") for i in range(width - 1)]
        killer = call(p.CALL_FN, (exit_after, (0.5,), {}), "killer")
        held = [call(p.CALL_FN, (abs, (-i,), {}), f"held-{i}") for i in range(3)]
        for c in [*running, killer, *held]:
            ex.submit(c)
        errors: dict[str, WorkerCrashedError] = {}
        async with asyncio.timeout(30):
            for c in [*running, killer, *held]:
                try:
                    await c.future
                except WorkerCrashedError as exc:
                    errors[c.label] = exc
                except asyncio.CancelledError:
                    pass  # dropped before it began (it never runs): allowed
                else:
                    raise AssertionError(f"{c.label} was answered by a worker that died before it could run")
        assert errors["killer"].started and all(errors[c.label].started for c in running)
        if ex.knows_begun:  # exact: what it held and never began runs elsewhere, free
            assert not any(e.started for label, e in errors.items() if label.startswith("held")), errors
        for label, crashed in errors.items():
            assert "[task " in str(crashed) and crashed.call and crashed.call.startswith(label), (label, str(crashed))
        assert answered.future.result()[0] is True  # settled before: untouched
        await asyncio.sleep(0.1)
        assert ex.is_closed or not ex.is_available
        try:
            ex.submit(call(p.CALL_FN, (abs, (-2,), {})))
        except PoolClosedError:
            pass
        else:
            raise AssertionError("a dead executor took a call (it must raise PoolClosedError)")
    finally:
        await ex.stop()


CHECKS: list[Callable[[Make], Awaitable[None]]] = [
    check_lifecycle, check_runs_a_function, check_error_reply, check_pinned_state_in_order,
    check_missing_method, check_unpicklable_result_keeps_executor, check_drain_on_stop,
    check_refuses_after_stop, check_cancel_queued, check_async_method, check_call_traffic,
]


DEATH_CHECKS: list[Callable[[Make], Awaitable[None]]] = [check_death_fails_each_call_it_took_with_its_own_error]
"""Checks for executors whose worker runs in another process (one a call can end)."""


async def check_executor(make: Make, *, can_die: bool | None = None) -> None:
    """Run every check against the executor ``make(worker_id)`` builds, and the death
    checks when its worker can die apart from this process (``can_die``; by default:
    when a started one reports a pid other than this process's).

    :raises AssertionError: the first check the executor fails, naming what it did.
    """
    for check in CHECKS:
        await check(make)
    if can_die is None:
        probe = await started(make)
        try:
            pid = probe.info().pid
        finally:
            await probe.stop()
        can_die = pid is not None and pid != os.getpid()
    if can_die:
        for check in DEATH_CHECKS:
            await check(make)


__all__ = ["CHECKS", "DEATH_CHECKS", "Make", "Recorder", "call", "check_executor", "reply"]
