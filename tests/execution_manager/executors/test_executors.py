"""The conformance suite against every built-in executor plugin, plus what is local-only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from kernel.plugins import make_plugin_manager
from microkernel.plugins.inmemory.worker import InMemoryWorker
from microkernel.plugins.local.worker import LocalWorker
from microkernel.services.execution_manager.errors import WorkerCrashedError, WorkerStartError
from microkernel.services.execution_manager.executors import ReplyFuture, WorkerState
from microkernel.services.execution_manager.executors.testing import (
    CHECKS,
    DEATH_CHECKS,
    PROCESS_CHECKS,
    call,
    check_executor,
)
from microkernel.services.execution_manager.hookspecs import executor_types
from microkernel.services.execution_manager.wire import protocol as p

pytestmark = pytest.mark.anyio

MAKERS = {"local": lambda wid: LocalWorker(wid, {}), "inmemory": lambda wid: InMemoryWorker(wid, {})}


@pytest.mark.parametrize("node_type", sorted(MAKERS))
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_conformance(node_type: str, check) -> None:
    await check(MAKERS[node_type])


@pytest.mark.parametrize("check", DEATH_CHECKS + PROCESS_CHECKS, ids=lambda c: c.__name__)
async def test_conformance_when_the_worker_dies(check) -> None:
    await check(MAKERS["local"])  # inmemory runs calls in this very process: it cannot be lost


async def test_check_executor_runs_everything() -> None:
    await check_executor(MAKERS["inmemory"])


async def test_check_executor_runs_the_death_checks_for_a_worker_in_another_process() -> None:
    ran: list[str] = []

    def make(worker_id: str) -> LocalWorker:
        ran.append(worker_id)
        return LocalWorker(worker_id, {})

    await check_executor(make)
    assert len(ran) == len(CHECKS) + 1 + len(DEATH_CHECKS) + len(PROCESS_CHECKS)  # all, and the probe


def test_the_kit_is_installed_and_its_call_targets_need_no_test_runner() -> None:
    import subprocess
    import sys

    code = ("import sys, microkernel.services.execution_manager.executors.testing.targets; "
            "print('pytest' in sys.modules, 'hypothesis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out


def test_builtins_registered_through_entry_points() -> None:
    registry = executor_types(make_plugin_manager())
    assert registry["local"] is LocalWorker and registry["inmemory"] is InMemoryWorker


@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
async def test_local_worker_death_fails_call_naming_worker_pid_and_cause(how: str) -> None:
    ex = LocalWorker("crashy", {})
    await ex.start()
    pid = ex.pid
    if how == "exit":
        c = call(p.CALL_FN, (os._exit, (3,), {}), "os._exit")
    elif how == "sigkill":
        c = call(p.CALL_FN, (os.kill, (pid, signal.SIGKILL), {}), "os.kill")
    else:
        import ctypes

        c = call(p.CALL_FN, (ctypes.string_at, (0,), {}), "string_at")
    ex.submit(c)
    with pytest.raises(WorkerCrashedError) as info:
        async with asyncio.timeout(10):
            await c.future
    text = str(info.value)
    assert f"worker crashy (pid {pid})" in text
    expected = {"exit": "exited with code 3", "sigkill": "killed by signal SIGKILL", "segfault": "killed by signal SIGSEGV"}[how]
    assert expected in text and f"[task {c.id}]" in text
    assert info.value.pid == pid and info.value.retryable
    assert ex.state == WorkerState.FAILED
    await ex.stop()
    assert ex.state == WorkerState.TERMINATED


async def test_local_worker_that_cannot_start() -> None:
    ex = LocalWorker("broken", {"startTimeout": 10, "python": "/bin/false"})
    with pytest.raises(WorkerStartError, match=r"worker broken \(pid \d+\) exited with code \d+ before registering"):
        await ex.start()
    assert ex.state == WorkerState.FAILED


async def test_a_dead_worker_fails_exactly_the_calls_it_had_begun() -> None:
    # The worker marks each call it begins on a page shared with the kernel, which
    # survives SIGKILL: the call behind the one that killed it never began.
    ex = LocalWorker("prefetch", {})
    await ex.start()
    first = call(p.CALL_FN, (os._exit, (5,), {}), "os._exit")
    behind = call(p.CALL_FN, (abs, (-1,), {}), "abs")
    ex.submit(first)
    ex.submit(behind)
    errors = []
    for c in (first, behind):
        with pytest.raises(WorkerCrashedError) as info:
            async with asyncio.timeout(10):
                await c.future
        errors.append(info.value)
    assert [e.started for e in errors] == [True, False]
    assert "exited with code 5 while running os._exit" in str(errors[0])
    assert "before starting abs()" in str(errors[1])
    await ex.stop()


async def test_a_reply_future_hands_every_outcome_over_in_the_same_turn() -> None:
    seen: list[object] = []
    future = ReplyFuture()
    future.follow_now(lambda f: seen.append(f.result()))
    future.set_result((True, b"x"))
    assert seen == [(True, b"x")]  # before the loop ran anything: no turn lost per call

    failing = ReplyFuture()
    failing.follow_now(lambda f: seen.append(type(f.exception()).__name__))
    failing.set_exception(WorkerCrashedError("gone"))
    cancelled = ReplyFuture()
    cancelled.follow_now(lambda f: seen.append("cancelled" if f.cancelled() else "?"))
    cancelled.cancel()  # a call dropped before it began
    assert seen[1:] == ["WorkerCrashedError", "cancelled"]
    done_before = ReplyFuture()
    done_before.set_result((True, b"y"))
    done_before.follow_now(lambda f: seen.append(f.result()))
    assert len(seen) == 3  # done before it was followed: a turn later, as a done-callback
    await asyncio.sleep(0)
    assert seen[3:] == [(True, b"y")]

    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        broken = ReplyFuture()
        broken.follow_now(lambda f: 1 / 0)
        broken.set_result((True, b"z"))  # the follower's error is reported, not raised into the executor
        assert isinstance(errors[0]["exception"], ZeroDivisionError) and broken.result() == (True, b"z")
    finally:
        asyncio.get_running_loop().set_exception_handler(None)


async def test_a_local_worker_keeps_each_answer_as_it_came_for_a_relay() -> None:
    """What a node agent forwards to the kernel: the worker's own RESULT and ERROR frames,
    taken once while the reply is followed (the kernel's local workers keep none)."""
    import math

    from microkernel.services.execution_manager.wire.serialization import dumps_call

    relaying, plain = LocalWorker("relay-1", {"keepAnswers": True}), LocalWorker("plain-1", {})
    await asyncio.gather(relaying.start(), plain.start())
    try:
        for ex, kept in ((relaying, True), (plain, False)):
            frames: list[bytes | None] = []
            for value, expect in ((5, p.Result), (-1, p.Error)):  # factorial(-1) raises ValueError
                reply = ReplyFuture()
                reply.call = attempt = call(p.CALL_FN, None)
                attempt.future, attempt.payload = reply, dumps_call("f", (math.factorial, (value,), {}), (value,), {},
                                                                    fn=math.factorial)
                reply.follow_now(lambda _f, a=attempt, ex=ex, out=frames: out.append(ex.answer_frame(a.id)))
                ex.submit(attempt)
                await asyncio.wait_for(reply, 10)
                if kept:
                    message = p.decoder((p.Result, p.Error)).decode(frames[-1])
                    assert type(message) is expect and message.call_id == attempt.id
                    assert ex.answer_frame(attempt.id) is None  # once
            assert kept or frames == [None, None]
    finally:
        await asyncio.gather(relaying.stop(), plain.stop())


async def test_a_call_taken_back_and_sent_again_begins_where_the_kernel_counts_it(tmp_path: Path) -> None:
    """A call sent ahead, taken back (its cancel confirmed) and sent again after another
    call must begin from its newest frame, in the order the kernel sent. Else, killed while
    running the other call, the worker would have run it with the kernel sure it had not
    (it then runs elsewhere too: twice). The soak found this under chaos."""
    from microkernel.services.execution_manager.wire.serialization import dumps_call
    from tests import tasks

    def attempt(call_id: int, fn: object, *args: object) -> tuple[ReplyFuture, object]:
        reply = ReplyFuture()
        reply.call = a = call(p.CALL_FN, None)
        a.id, a.future, a.payload = call_id, reply, dumps_call("t", (fn, args, {}), args, {}, fn=fn)
        return reply, a

    ex = LocalWorker("resend-1", {})
    await ex.start()
    try:
        touched, started = tmp_path / "T", tmp_path / "B"
        first, long = attempt(101, tasks.slow, 0.5)
        ex.submit(long)
        taken, t1 = attempt(102, tasks.touch, str(touched))
        ex.submit(t1)  # sent ahead, behind the long call
        assert ex.cancel(102)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(taken, 5)  # the worker confirmed: it had not begun
        blocker, b = attempt(103, tasks.announce_then_wait, str(started), 30)
        ex.submit(b)
        again, t2 = attempt(102, tasks.touch, str(touched))
        ex.submit(t2)  # sent again, after the blocker
        await asyncio.wait_for(first, 5)
        for _ in range(200):
            if started.exists():
                break
            await asyncio.sleep(0.02)
        assert started.exists(), "the blocker never began"
        os.kill(ex.info().pid, signal.SIGKILL)
        for fut in (blocker, again):
            with contextlib.suppress(WorkerCrashedError):
                await asyncio.wait_for(fut, 10)
        err = again.exception()
        assert isinstance(err, WorkerCrashedError) and not err.started  # the kernel says: never begun...
        assert not touched.exists()  # ...and so it is
    finally:
        await ex.stop(drain=False)


class _LyingOffers(InMemoryWorker):
    """Promises a GPU it never reports."""

    node_type = "lying"

    @classmethod
    def offers(cls, options):  # type: ignore[no-untyped-def]
        return {"gpu": 1.0}


class _LeavesATask(InMemoryWorker):
    """Starts a task of its own that stop() forgets."""

    async def start(self) -> None:
        await super().start()
        self._forgotten = asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="forgotten")


class _LeavesAChild(InMemoryWorker):
    """Starts a helper process that stop() forgets."""

    async def start(self) -> None:
        await super().start()
        self._child = await asyncio.create_subprocess_exec("sleep", "30")

    async def stop(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        await super().stop(drain=drain, timeout=timeout)


@pytest.mark.parametrize(("kind", "names"), [
    (_LyingOffers, ["_LyingOffers (node type 'lying')", "fails check_offers_match_info", "offers() promised {'gpu': 1.0}"]),
    (_LeavesATask, ["_LeavesATask (node type 'inmemory')", "fails check_stop_leaves_nothing_behind", "asyncio task", "sleep"]),
    (_LeavesAChild, ["_LeavesAChild", "fails check_stop_leaves_nothing_behind", "child process", "sleep 30"]),
], ids=["offers", "task", "child"])
async def test_check_executor_fails_naming_the_plugin_and_the_behaviour(kind, names) -> None:
    made: list[InMemoryWorker] = []

    def make(worker_id: str) -> InMemoryWorker:
        made.append(kind(worker_id, {}))
        return made[-1]

    try:
        with pytest.raises(AssertionError) as failed:
            await check_executor(make)
        for name in names:
            assert name in str(failed.value), str(failed.value)
    finally:
        for worker in made:  # what the broken workers left: cleaned here, not by the kit
            task = getattr(worker, "_forgotten", None)
            if task is not None:
                task.cancel()
            child = getattr(worker, "_child", None)
            if child is not None and child.returncode is None:
                child.kill()
                await child.wait()
