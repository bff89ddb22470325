"""The checks of the executor conformance suite (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kernel.errors import RequestError

from ...errors import PoolClosedError, WorkerConflictError, WorkerCrashedError
from ...wire import dumps, loads, protocol as p
from ..attempt import Attempt
from ..interface import Worker, WorkerState
from .targets import Accumulator, Quiet, chatty, chatty_async, exit_after, fail, unpicklable_result

Make = Callable[[str], Worker]
_ids = itertools.count(1)


def call(kind: int, payload: Any, label: str = "check") -> Attempt:
    loop = asyncio.get_running_loop()
    return Attempt(next(_ids), kind, dumps(payload), loop.create_future(), label)


async def reply(ex: Worker, c: Attempt, timeout: float = 10.0) -> tuple[bool, Any]:
    ex.submit(c)
    async with asyncio.timeout(timeout):
        result: tuple[bool, Any] = await c.future
    return result


async def started(make: Make) -> Worker:
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


async def check_messages(make: Make) -> None:
    """An operator's message reaches each pinned instance's ``on_message`` and the answers
    come back in pin order (an instance without one answers why not, naming its class);
    or the worker type says it takes no messages (``WorkerConflictError``, the default)."""
    ex = await started(make)
    try:
        try:
            nobody = await asyncio.wait_for(ex.tell(b'{"n": 1}'), 10)
        except WorkerConflictError as exc:
            assert "does not take messages" in str(exc), f"tell() refused without saying why: {exc}"
            return
        assert nobody == [], f"with nothing pinned, tell() answered {nobody!r}"
        await reply(ex, call(p.PIN, ("k-told", Accumulator())))
        await reply(ex, call(p.CALL_PINNED, ("k-told", "add", (5,), {})))
        await reply(ex, call(p.PIN, ("k-quiet", Quiet())))
        (ok, first), (quiet_ok, why) = await asyncio.wait_for(ex.tell(b'{"n": 2}'), 10)
        assert ok and json.loads(first) == {"items": 1, "echo": {"n": 2}}, f"tell() answered {first!r}"
        assert not quiet_ok and "Quiet has no on_message" in why, f"an instance without a handler answered {why!r}"
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


async def check_unpicklable_result_keeps_the_worker(make: Make) -> None:
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
        # Either the worker drops it (its future ends cancelled once that is certain, and
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

    def progress(self, attempt: Attempt, fraction: float, message: str) -> None:
        self.progress_seen.append((attempt.id, fraction, message))

    def log(self, attempt: Attempt, level: str, message: str, fields: Any) -> None:
        self.logs.append((attempt.id, level, message, dict(fields)))

    async def request(self, attempt: Attempt, route: str, payload: bytes) -> tuple[bool, bytes]:
        args, kwargs = loads(payload)
        if route != "echo":
            return False, dumps(RequestError(f"unknown route {route!r}"))
        await asyncio.sleep(0)
        return True, dumps((args, kwargs))


async def check_call_traffic(make: Make) -> None:
    """A running call's progress, logs and requests reach the worker's host; the
    request blocks neither the worker nor the call queued behind it."""
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
    """For workers that live in another process: it dies with a call running on
    every thread and more held. Each call it took fails with a WorkerCrashedError that
    names that call; those running count as begun (and, where the worker
    ``knows_begun``, only those); a call answered before is never reported crashed;
    the worker ends FAILED and takes no more calls."""
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
            raise AssertionError("a dead worker took a call (it must raise PoolClosedError)")
    finally:
        await ex.stop()


async def check_abort(make: Make) -> None:
    """``abort`` stops a running call by force, or says it cannot: True, and the call
    fails soon (well before it would have ended) with a WorkerCrashedError that
    includes the reason; False, and it runs to its end as usual. An unknown call is
    False. Either way its future ends, and a worker still open runs the next call."""
    ex = await started(make)
    try:
        assert ex.abort(10**9, "no such call") is False, "abort() of a call it never held must be False"
        long = call(p.CALL_FN, (time.sleep, (4.0,), {}), "long")
        ex.submit(long)
        await asyncio.sleep(0.3)
        began = time.monotonic()
        stopped = ex.abort(long.id, "aborted by the kit")
        async with asyncio.timeout(15):
            try:
                outcome: Any = await long.future
            except WorkerCrashedError as exc:
                outcome = exc
        took = time.monotonic() - began
        if stopped:
            assert isinstance(outcome, WorkerCrashedError), f"abort() said True, yet the call ended with {outcome!r}"
            assert "aborted by the kit" in str(outcome), f"the error does not include the reason: {outcome}"
            assert took < 3.0, f"abort() said True, yet the call ran on for {took:.1f} s"
        else:
            assert isinstance(outcome, tuple) and outcome[0] is True, (
                f"abort() said False (cannot stop it), yet the call ended with {outcome!r}")
        if not ex.is_closed:
            await asyncio.sleep(0.1)
            if ex.is_available:
                ok, data = await reply(ex, call(p.CALL_FN, (abs, (-4,), {})))
                assert ok and loads(data) == 4, "after an abort the worker stays open but does not run calls"
    finally:
        await ex.stop()


async def check_measured_run_time(make: Make) -> None:
    """``Attempt.ran``, where a worker sets it, is the time the call ran: at least what
    it slept, at most the time the caller waited. A worker with transit ``overhead``
    must set it (the pool's own timing would include the transit)."""
    ex = await started(make)
    try:
        c = call(p.CALL_FN, (time.sleep, (0.2,), {}), "sleeper")
        began = time.monotonic()
        ok, _ = await reply(ex, c)
        waited = time.monotonic() - began
        assert ok
        if ex.overhead > 0:
            assert c.ran is not None, f"overhead is {ex.overhead} s, yet Attempt.ran was not set"
        if c.ran is not None:
            assert 0.19 <= c.ran <= waited + 0.01, (
                f"Attempt.ran is {c.ran:.3f} s for a 0.2 s call answered in {waited:.3f} s")
    finally:
        await ex.stop()


async def check_offers_match_info(make: Make) -> None:
    """What the class says a new worker would offer (``offers(options)``, asked before
    any starts) is what a started one reports in ``info().resources``."""
    ex = await started(make)
    try:
        promised = type(ex).offers(ex.options)
        info = ex.info()
        assert info.width >= 1, f"info().width is {info.width}"
        if promised is not None:
            assert dict(promised) == dict(info.resources), (
                f"offers() promised {dict(promised)}, a started worker reports {dict(info.resources)}")
    finally:
        await ex.stop()


async def check_liveness(make: Make) -> None:
    """A healthy worker judged by ``check_alive`` (its process running, or no process)
    stays available and gives no reason to end it."""
    ex = await started(make)
    try:
        pid = ex.info().pid
        status = "sleeping" if pid is not None and pid != os.getpid() else None
        for _ in range(3):
            assert ex.check_alive(status, 5.0) is None, "check_alive() ended a healthy worker"
            await asyncio.sleep(0.05)
        assert ex.is_available, f"a healthy worker judged by check_alive() is {ex.state.value}"
    finally:
        await ex.stop()


async def check_stop_leaves_nothing_behind(make: Make) -> None:
    """After ``stop()`` the worker is TERMINATED and has left no child process, file
    descriptor, socket or asyncio task of its own behind."""
    before = _resources()
    ex = await started(make)
    ok, _ = await reply(ex, call(p.CALL_FN, (abs, (-1,), {})))
    assert ok
    await ex.stop()
    assert ex.state == WorkerState.TERMINATED, f"stop() ended in {ex.state.value}, not terminated"
    left = ""
    for _ in range(40):  # what ends asynchronously gets two seconds
        left = _leaks(before, _resources())
        if not left:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stop() left {left} behind")


def _resources() -> dict[str, set[Any]]:
    import psutil

    me = psutil.Process()
    tasks = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    return {
        "child process": _descendants(me),
        "file descriptor": {(fd, _fd_target(fd)) for fd in _fds()},
        "socket": {(c.fd, str(c.laddr), str(c.raddr)) for c in me.net_connections(kind="all")},
        "asyncio task": {(id(t), repr(t.get_coro())) for t in tasks},
    }


def _leaks(before: dict[str, set[Any]], after: dict[str, set[Any]]) -> str:
    found = []
    # A process started before the worker (a node agent a test runs) keeps its own
    # children going: only what descends from a new child of this process counts.
    older = {pid for pid, _top, _cmd in before["child process"]}
    for kind, now in after.items():
        new = now - before[kind]
        if kind == "child process":
            new = {(pid, cmd) for pid, top, cmd in new if top not in older}
        if new:
            shown = ", ".join(" ".join(str(x) for x in item) for item in sorted(new, key=str)[:3])
            plural = kind + ("es" if kind.endswith("ss") else "s") if len(new) > 1 else kind
            found.append(f"{len(new)} {plural} ({shown})")
    return "; ".join(found)


def _descendants(me: Any) -> set[tuple[int, int, str]]:
    """This process's live descendants as (pid, the child of this process it descends
    through, command line)."""
    found = set()
    for child in me.children(recursive=True):
        try:
            if not _alive(child):
                continue
            top = child
            while top.ppid() != me.pid:
                top = top.parent()
            found.add((child.pid, top.pid, " ".join(child.cmdline()[:4])))
        except Exception:  # it ended meanwhile, or its parent did
            continue
    return found


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _fds() -> list[int]:
    try:
        return [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:  # not Linux: psutil counts, without names
        return []


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


async def check_a_stopped_process_is_declared_dead(make: Make) -> None:
    """For workers that live in another process: stopped (SIGSTOP) with a call
    running, it is marked not available at once, and ended past the timeout by
    ``check_alive`` (which returns why); the call fails with a WorkerCrashedError."""
    import signal

    ex = await started(make)
    try:
        pid = ex.info().pid
        assert pid is not None and pid != os.getpid(), "a worker in another process reports that process's pid"
        running = call(p.CALL_FN, (time.sleep, (3.0,), {}), "frozen")
        ex.submit(running)
        await asyncio.sleep(0.2)
        os.kill(pid, signal.SIGSTOP)
        try:
            why = ex.check_alive("stopped", 0.5)
            assert not ex.is_available, f"a stopped worker stays {ex.state.value}"
            async with asyncio.timeout(10):
                while why is None:
                    await asyncio.sleep(0.1)
                    why = ex.check_alive("stopped", 0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        assert why, "check_alive() never declared a stopped worker dead"
        async with asyncio.timeout(10):
            try:
                outcome: Any = await running.future
            except WorkerCrashedError as exc:
                outcome = exc
        assert isinstance(outcome, WorkerCrashedError), f"the call on a worker declared dead ended with {outcome!r}"
        assert ex.is_closed, f"a worker declared dead is {ex.state.value}, not closed"
    finally:
        await ex.stop()


CHECKS: list[Callable[[Make], Awaitable[None]]] = [
    check_lifecycle, check_runs_a_function, check_error_reply, check_pinned_state_in_order, check_messages,
    check_missing_method, check_unpicklable_result_keeps_the_worker, check_drain_on_stop,
    check_refuses_after_stop, check_cancel_queued, check_async_method, check_call_traffic, check_abort,
    check_measured_run_time, check_offers_match_info, check_liveness, check_stop_leaves_nothing_behind,
]


DEATH_CHECKS: list[Callable[[Make], Awaitable[None]]] = [check_death_fails_each_call_it_took_with_its_own_error]
"""Checks for workers that live in another process (one a call can end)."""

PROCESS_CHECKS: list[Callable[[Make], Awaitable[None]]] = [check_a_stopped_process_is_declared_dead]
"""Checks for workers whose own process on this machine the monitor samples (a pid,
no ``info().node``): their liveness is judged from that process's state. Remote
workers' liveness comes from their node's heartbeats instead."""


async def check_executor(make: Make, *, can_die: bool | None = None) -> None:
    """Run every check against the worker ``make(worker_id)`` builds, the death checks
    when it can die apart from this process (``can_die``; by default: when a started
    one reports a pid other than this process's), and the process checks when that
    process is on this machine (no ``info().node``).

    :raises AssertionError: the first check the worker fails, naming the worker type,
        the check and what the worker did.
    """
    probe = await started(make)
    try:
        kind, info = type(probe), probe.info()
    finally:
        await probe.stop()
    elsewhere = info.pid is not None and info.pid != os.getpid()
    if can_die is None:
        can_die = elsewhere
    sampled = elsewhere and info.node is None
    for check in [*CHECKS, *(DEATH_CHECKS if can_die else ()), *(PROCESS_CHECKS if sampled else ())]:
        try:
            await check(make)
        except AssertionError as exc:
            name = f"{kind.__module__}.{kind.__qualname__}"
            if kind.node_type:
                name += f" (node type {kind.node_type!r})"
            raise AssertionError(f"{name} fails {check.__name__}: {exc}") from exc


__all__ = ["CHECKS", "DEATH_CHECKS", "PROCESS_CHECKS", "Make", "Recorder", "call", "check_executor", "reply"]
