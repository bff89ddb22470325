"""Liveness judged from outside the worker: stopped, zombie-like or silent workers are
declared dead and replaced; a call that holds the GIL is not."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import WorkerCrashedError
from tests import tasks
from tests.conftest import EM_LOCAL
from tests.nodes import until

pytestmark = pytest.mark.anyio
TIMEOUT = 1.0  # heartbeatTimeout in these tests


def em_kernel(**custom: object) -> Kernel:
    settings = {**EM_LOCAL, "heartbeatTimeout": TIMEOUT, "sampleInterval": 0.2, **custom}
    return Kernel([], settings={"execution-manager": settings})


async def running_pid(em: object) -> tuple[str, int]:
    pool = em.pool  # type: ignore[attr-defined]
    await until(lambda: any(w.running for w in pool.fleet.members), 10, "a call running")
    worker = next(w for w in pool.fleet.members if w.running)
    await asyncio.sleep(0.2)  # sent, and begun: a call the worker never began would run elsewhere, free
    return worker.id, worker.backend.info().pid


async def test_a_stopped_worker_fails_its_call_in_time_and_is_replaced() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        errors: list[dict] = []
        em.subscribe("worker-error", lambda _e, payload: errors.append(dict(payload)))
        call = em.submit(tasks.slow, 30, "never")
        wid, pid = await running_pid(em)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(WorkerCrashedError) as info:
            async with asyncio.timeout(TIMEOUT + 5):
                await call
        took = time.monotonic() - t0
        text = str(info.value)
        assert f"worker {wid} (pid {pid})" in text and "[task " in text, text
        assert "declared dead: stopped (SIGSTOP)" in text and "SIGKILL" in text, text
        assert took < TIMEOUT + 1 + 1.5, took  # the promise is timeout + 1 s; slack for a loaded machine
        assert any("declared dead" in e["reason"] for e in errors)
        assert await em.submit(tasks.whoami) not in (pid, os.getpid())  # served, by another worker
        await until(lambda: len(em.pool.fleet.members) == 2, 10, "a replacement")


async def test_a_call_allowed_to_retry_survives_its_worker_being_stopped() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        call = em.submit(tasks.stamp, "done", 1.0, retries=1)
        _, pid = await running_pid(em)
        os.kill(pid, signal.SIGSTOP)
        async with asyncio.timeout(TIMEOUT + 10):
            assert (await call)[0] == "done"
        assert len(call.attempts) == 1 and "declared dead" in call.attempts[0].outcome


async def test_a_worker_that_stops_while_idle_gets_no_call_and_is_replaced() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        pids = {w.backend.info().pid for w in em.pool.fleet.members}
        assert await em.submit(tasks.stop_self_after, 0.1) == "will stop"
        await asyncio.sleep(0.6)  # it stopped; the monitor has seen it: no call goes there now
        async with asyncio.timeout(10):
            got = await asyncio.gather(*(em.submit(tasks.whoami) for _ in range(6)))
        stopped = [pid for pid in pids if pid not in got]
        assert stopped  # all six went elsewhere
        await until(lambda: not {w.backend.info().pid for w in em.pool.fleet.members} & set(stopped), 10,
                    "the stopped worker to be replaced")


async def test_an_idle_worker_that_no_longer_answers_is_declared_dead() -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        assert await em.submit(tasks.wedge_after_return, 0.2) == "wedged"
        [worker] = em.pool.fleet.members
        pid = worker.backend.info().pid
        await until(lambda: worker.backend.is_closed, TIMEOUT * 4 + 5, "the silent worker to be declared dead")
        assert "silent" in (worker.backend.info().exit_reason or "")
        assert await em.submit(tasks.whoami) != pid


async def test_idle_workers_that_answer_live_on_however_rarely_they_are_sampled() -> None:
    # Samples as far apart as the timeout: an idle worker is silent between pings, and
    # must be judged by whether it answered the last one, not by its last word.
    async with em_kernel(minWorkers=2, maxWorkers=2, sampleInterval=TIMEOUT) as kernel:
        em = kernel.get_service("execution-manager")
        errors: list[dict] = []
        em.subscribe("worker-error", lambda _e, payload: errors.append(dict(payload)))
        pids = {w.backend.info().pid for w in em.pool.fleet.members}
        await asyncio.sleep(TIMEOUT * 5)
        assert {w.backend.info().pid for w in em.pool.fleet.members} == pids and errors == []


async def test_a_call_that_holds_the_gil_past_the_timeout_is_not_declared_dead() -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1, heartbeatTimeout=0.5) as kernel:
        em = kernel.get_service("execution-manager")
        errors: list[dict] = []
        em.subscribe("worker-error", lambda _e, payload: errors.append(dict(payload)))
        t0 = time.monotonic()
        async with asyncio.timeout(60):
            assert await em.submit(tasks.hold_gil, 6 * 10**7) == sum(range(6 * 10**7))
        assert time.monotonic() - t0 > 0.5  # it did hold the GIL past the heartbeat timeout
        assert errors == []
