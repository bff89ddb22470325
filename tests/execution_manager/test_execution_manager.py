"""The execution manager on real local worker processes."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from kernel import Kernel
from kernel.errors import ServiceStartError, SettingsError
from microkernel.services.execution_manager.errors import (
    CallTimeoutError,
    PoolClosedError,
    RemoteError,
    SerializationError,
    WorkerCrashedError,
    WorkerStartError,
)
from tests import tasks
from tests.conftest import EM_LOCAL

pytestmark = pytest.mark.anyio


def em_kernel(**custom: object) -> Kernel:
    return Kernel([], settings={"execution-manager": {**EM_LOCAL, **custom}})


async def test_submit_and_map_run_on_worker_processes() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        assert await em.submit(tasks.inc, 41) == 42
        pids = set(await asyncio.gather(*(em.submit(tasks.slow, 0.1, os.getpid()) for _ in range(4))))
        assert pids == {os.getpid()}  # the value round-trips...
        worker_pids = {await em.submit(tasks.whoami) for _ in range(10)}
        assert os.getpid() not in worker_pids  # ...but calls ran elsewhere
        results = [r async for r in em.map(tasks.inc, range(1000))]
        assert results == list(range(1, 1001))
        assert [r async for r in em.map(tasks.inc, [])] == []
        assert [r async for r in em.map(lambda x: x * 2, range(5), chunksize=2)] == [0, 2, 4, 6, 8]
        stats = await em.get_stats()
        assert stats.workers == 2 and len(stats.worker_details) == 2
        assert {w.node_type for w in stats.worker_details} == {"local"}
        assert all(w.pid and w.pid != os.getpid() for w in stats.worker_details)
        assert stats.tasks_done >= 16 and stats.queued_tasks == 0
        assert "WorkerPool workers=2" in repr(em)
        running = em.submit(tasks.slow, 0.5)
        await asyncio.sleep(0.2)
        assert re.fullmatch(r"<CallFuture slow\(0\.5\) \[task \d+\] attempt 1 on local-\d+>", repr(running))
        assert re.fullmatch(r"<Attempt 1 of slow\(0\.5\) \[task \d+\] on local-\d+>", repr(running.current))
        pool = em.pool
        assert re.fullmatch(r"<WorkerPool workers=2 busy=1 queued=0 held=0 running=1>", repr(pool))
        assert repr(pool.fleet) == "<Fleet local workers=2 busy=1 starting=0 bounds=2..2>"
        assert repr(pool.admission) == "<Admission maxQueue=None held=0 waiting for room=0>"
        busy = next(w for w in pool.fleet.members if w.running)
        assert re.fullmatch(r"<PoolWorker <LocalWorker local-\d+ .*> pins=0>", repr(busy)), repr(busy)
        await running
        assert repr(running).endswith("] done>")


async def test_exceptions_keep_type_and_remote_traceback() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        with pytest.raises(tasks.CustomError, match="nope") as info:
            await em.submit(tasks.raise_custom, "nope")
        tb = info.value.__cause__
        assert "raise_custom" in str(tb) and "on worker local-" in str(tb)
        assert info.value.remote_traceback == str(tb)
        with pytest.raises(RemoteError, match=r"tests.tasks.UnrebuildableError: x/y") as info2:
            await em.submit(tasks.raise_unrebuildable)
        assert info2.value.type_name == "tests.tasks.UnrebuildableError"
        assert "raise_unrebuildable" in info2.value.remote_traceback


async def test_serialisation_errors_name_the_culprit_and_worker_survives() -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        before = await em.submit(tasks.whoami)
        with pytest.raises(SerializationError, match=r"argument 1 \(<unlocked _thread.lock.*\) of inc: type _thread.lock"):
            await em.submit(tasks.inc, 1, threading.Lock())
        with pytest.raises(SerializationError, match=r"keyword argument 'x'.*of inc"):
            await em.submit(tasks.inc, x=threading.Lock())
        with pytest.raises(SerializationError, match=r"the result of make_lock: type _thread.lock"):
            await em.submit(tasks.make_lock)
        assert await em.submit(tasks.whoami) == before


@pytest.mark.parametrize(
    ("fn", "cause"),
    [(tasks.crash, "exited with code 1"), (tasks.sigkill_self, "killed by signal SIGKILL"),
     (tasks.segfault, "killed by signal SIGSEGV"),
     (tasks.break_protocol, "broke the protocol (unknown message type 42)")],
)
async def test_worker_death_fails_that_call_only_and_pool_goes_on(fn, cause: str) -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        died: list[dict] = []
        em.subscribe("worker-terminated", lambda _e, payload: died.append(dict(payload)))
        others = [asyncio.ensure_future(em.submit(tasks.slow, 0.3, i)) for i in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(WorkerCrashedError) as info:
            await em.submit(fn)
        assert cause in str(info.value) and f"{fn.__name__}()" in str(info.value)
        assert f"pid {info.value.pid}" in str(info.value) and info.value.worker_id.startswith("local-")
        async with asyncio.timeout(5):  # served, not hung (its speed is the benchmark's business)
            assert await em.submit(tasks.inc, 1) == 2
        # every other call goes on: one waiting behind the crash on that worker runs elsewhere
        assert await asyncio.gather(*others) == [0, 1, 2]
        assert died and died[0]["expected"] is False and cause in died[0]["reason"]
        for _ in range(100):
            if (await em.get_stats()).workers == 2:
                break
            await asyncio.sleep(0.05)
        assert (await em.get_stats()).workers == 2  # replaced


async def test_retryable_call_is_retried_after_a_crash(tmp_path: Path) -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        retried: list[dict] = []
        em.subscribe("task-retried", lambda _e, payload: retried.append(dict(payload)))
        marker = str(tmp_path / "marker")
        assert await em.submit(tasks.crash_unless_marker, marker, retries=2) == "survived"
        assert len(retried) == 1 and "exited with code 9" in retried[0]["reason"]
        os.remove(marker)
        with pytest.raises(WorkerCrashedError):
            await em.submit(tasks.crash_unless_marker, marker)  # at most once by default


async def test_calls_after_stop_are_refused() -> None:
    kernel = em_kernel()
    await kernel.start()
    em = kernel.get_service("execution-manager")
    await kernel.stop()
    with pytest.raises(PoolClosedError):
        await em.submit(tasks.inc, 1)


@pytest.mark.parametrize(
    ("custom", "field", "match"),
    [
        ({"maxWorkers": -1}, "maxWorkers", "greater than or equal to 0"),
        ({"minWorkers": 0, "maxWorkers": 0}, "", "maxWorkers 0 leaves no worker at all"),
        ({"nodes": {"port": 70000}}, "nodes.port", "less than or equal to 65535"),
        ({"nodes": {"heartbeatTimeout": 0.5}}, "nodes", r"heartbeatTimeout \(0.5\) must be above"),
        ({"minWorkers": 3, "maxWorkers": 2}, "", r"minWorkers \(3\) is above maxWorkers \(2\)"),
        ({"minWorkers": "two"}, "minWorkers", "valid integer"),
        ({"maxWorkerz": 2}, "maxWorkerz", "unknown field"),
        ({"runLocally": True}, "", "'runLocally' was renamed 'inProcess'"),
        ({"idleTimeout": 120, "maxIdle": 60}, "", r"maxIdle \(60\) must not be below idleTimeout \(120\)"),
        ({"scaleUpThreshold": 0.3, "scaleDownThreshold": 0.5}, "",
         r"scaleDownThreshold \(0.5\) must be below scaleUpThreshold \(0.3\)"),
        ({"localSlots": 2}, "", "'localSlots' was renamed 'inProcessThreads'"),
    ],
)
async def test_bad_settings_are_one_clear_error_and_nothing_runs(custom, field, match) -> None:
    with pytest.raises(SettingsError, match=match) as info:
        await Kernel([], settings={"execution-manager": custom}).start()
    assert info.value.service == "execution-manager" and field in {f for f, _ in info.value.problems}
    assert "config.json" not in str(info.value)  # the caller gave them, not the manifest


async def test_unknown_node_type() -> None:
    with pytest.raises(ServiceStartError, match=r"nodeType 'martian' is not a known node type \(known: inmemory, local\)"):
        await Kernel([], settings={"execution-manager": {"nodeType": "martian"}}).start()


async def test_runs_locally_when_the_machine_is_idle() -> None:
    async with Kernel([], settings={"execution-manager": {"minWorkers": 1, "maxWorkers": 1, "inProcess": True, "inProcessThreshold": 1.0}}) as kernel:
        em = kernel.get_service("execution-manager")
        assert await em.submit(tasks.whoami) == os.getpid()
        # the local slot is busy: the next call goes to a worker
        busy = asyncio.ensure_future(em.submit(tasks.slow, 0.3))
        await asyncio.sleep(0.05)
        assert await em.submit(tasks.whoami) != os.getpid()
        await busy
        assert await em.submit(tasks.whoami, timeout=5) != os.getpid()  # a timeout cannot be enforced there


async def test_a_services_calls_run_in_the_kernels_process_only_if_its_manifest_opts_in(tmp_path: Path) -> None:
    from tests.conftest import write_service
    from tests.execution_manager.test_distributed import COUNTER

    write_service(tmp_path, "plain", {"global": True}, COUNTER)
    write_service(tmp_path, "trusted", {"global": True, "inProcess": True}, COUNTER)
    em = {"minWorkers": 1, "maxWorkers": 1, "inProcess": True, "inProcessThreshold": 1.0}
    async with Kernel([tmp_path], settings={"execution-manager": em}) as kernel:
        assert await kernel.get_service("trusted").pid() == os.getpid()
        assert await kernel.get_service("plain").pid() != os.getpid()


async def test_autoscaling_up_under_load_and_down_when_idle() -> None:
    custom = {"minWorkers": 1, "maxWorkers": 2, "monitorInterval": 0.2, "sampleInterval": 0.1, "scaleCooldown": 0.5,
              "inProcess": False, "idleTimeout": 0, "scaleDownThreshold": 0.79}  # (a busy test machine's CPU)
    async with Kernel([], settings={"execution-manager": custom}) as kernel:
        em = kernel.get_service("execution-manager")
        events: list[str] = []
        when: dict[str, float] = {}
        em.subscribe("*", lambda e, _p: (events.append(e), when.setdefault(e, time.monotonic())))
        assert (await em.get_stats()).workers == 1
        pids = set(await asyncio.gather(*(em.submit(tasks.slow, 0.2, None) for _ in range(8))))
        assert pids == {None}
        assert "worker-started" in events and "scaled-up" in events
        for _ in range(60):
            if (await em.get_stats()).workers == 1:
                break
            await asyncio.sleep(0.1)
        stats = await em.get_stats()
        assert stats.workers == 1 and "scaled-down" in events
        assert when["scaled-down"] - when["scaled-up"] >= 0.5  # not within the cooldown
        assert "below" in stats.last_scaling
        decision = stats.scaling  # the last decision as fields, "steady" included
        assert decision is not None and decision.rule in ("retire-idle", "steady"), decision
        # What it saw: a retirement saw the worker it retired free (the other may still have been
        # finishing its last call); a later tick sees the one left, free.
        free = (1, 2) if decision.rule == "retire-idle" else (1,)
        assert decision.waiting == 0 and decision.free_workers in free and 0 <= decision.cpu_percent <= 100
        assert decision.rule != "retire-idle" or (decision.worker is not None and decision.idle_seconds is not None)


async def test_calls_start_when_made_and_cancelled_queued_calls_never_run(tmp_path: Path) -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        eager = tmp_path / "eager"
        em.submit(tasks.touch, str(eager))  # never awaited: it runs anyway
        for _ in range(100):
            if eager.exists():
                break
            await asyncio.sleep(0.02)
        assert eager.read_text() == "ran\n"

        busy = em.submit(tasks.slow, 0.4, "done")
        never = tmp_path / "never"
        queued = em.submit(tasks.touch, str(never))
        timed_out = em.submit(tasks.touch, str(never))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(timed_out, 0.05)  # wait_for cancels it
        assert queued.cancel() and queued.cancelled()
        assert await busy == "done"
        assert await em.submit(tasks.inc, 1) == 2
        assert not never.exists()
        stats = await em.get_stats()
        assert stats.active_tasks == 0 and stats.queued_tasks == 0


async def test_task_events_name_worker_and_call() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        seen: list[tuple[str, dict]] = []
        em.subscribe("task-complete", lambda e, p: seen.append((e, dict(p))))
        em.subscribe("attempt-failed", lambda e, p: seen.append((e, dict(p))))
        await em.submit(tasks.inc, 1)
        with pytest.raises(tasks.CustomError):
            await em.submit(tasks.raise_custom, "x")
        assert [e for e, _ in seen] == ["task-complete", "attempt-failed"]
        assert seen[0][1]["call"] == "inc" and seen[0][1]["worker_id"].startswith("local-")
        assert seen[1][1]["call"] == "raise_custom"
        with pytest.raises(ValueError, match="unknown event 'task-done'"):
            em.subscribe("task-done", print)
        with pytest.raises(ValueError, match="'task-error' was renamed 'attempt-failed'"):
            em.subscribe("task-error", print)


async def test_workers_that_cannot_start_fail_kernel_start_clearly() -> None:
    broken = {"minWorkers": 2, "maxWorkers": 2, "executorOptions": {"python": "/bin/false", "startTimeout": 5}}
    with pytest.raises(ServiceStartError, match=r"none of the 2 minimum workers \(local\) could start"):
        await Kernel([], settings={"execution-manager": broken}).start()


async def test_calls_fail_instead_of_hanging_when_no_worker_can_start() -> None:
    broken = {"minWorkers": 0, "maxWorkers": 1, "inProcess": False,
              "executorOptions": {"python": "/bin/false", "startTimeout": 5}}
    async with Kernel([], settings={"execution-manager": broken}) as kernel:
        em = kernel.get_service("execution-manager")
        with pytest.raises(WorkerStartError, match=r"no worker could be started: worker local-\d+ \(pid \d+\) exited"):
            async with asyncio.timeout(10):
                await em.submit(tasks.inc, 1)


async def test_queued_calls_fail_with_pool_closed_at_stop() -> None:
    kernel = em_kernel(minWorkers=1, maxWorkers=1)
    await kernel.start()
    em = kernel.get_service("execution-manager")
    running = em.submit(tasks.slow, 0.3, "finished")
    queued = [em.submit(tasks.inc, i) for i in range(10)]
    await asyncio.sleep(0.05)
    await kernel.stop()
    assert await running == "finished"  # drained
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(o, PoolClosedError) or o == i + 1 for i, o in enumerate(outcomes))
    assert any(isinstance(o, PoolClosedError) for o in outcomes)


@pytest.mark.parametrize(("fn", "kill_by"), [(tasks.slow, "SIGTERM"), (tasks.stubborn_sleep, "SIGKILL")])
async def test_timeout_stops_the_running_call_and_replaces_its_worker(fn, kill_by: str) -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1, executorOptions={"killGrace": 0.3}) as kernel:
        em = kernel.get_service("execution-manager")
        died: list[dict] = []
        em.subscribe("worker-terminated", lambda _e, payload: died.append(dict(payload)))
        held = em.submit(tasks.inc, 41)  # waits behind the stuck call on the one worker
        t0 = time.perf_counter()
        with pytest.raises(CallTimeoutError, match=rf"{fn.__name__}\(.*\) \[task \d+\] did not finish within 0.5 s; worker local-1 running it was stopped") as info:
            await em.submit(fn, 30, timeout=0.5)
        assert isinstance(info.value, TimeoutError)
        assert time.perf_counter() - t0 < 0.5 + 1.0
        assert await held == 42  # it never started there, so it ran on the replacement
        for _ in range(100):
            if died:
                break
            await asyncio.sleep(0.02)
        assert kill_by in died[0]["reason"] and "ran past its timeout of 0.5 s" in died[0]["reason"]
        assert await em.submit(tasks.inc, 1) == 2


async def test_the_timeout_counts_from_the_start_on_a_worker_not_the_wait() -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        busy = [em.submit(tasks.slow, 0.4) for _ in range(3)]  # the one worker is busy for 1.2 s
        t0 = time.perf_counter()
        assert await em.submit(tasks.slow, 0.05, "ok", timeout=0.5) == "ok"  # waited 1.2 s, ran 0.05 s
        assert time.perf_counter() - t0 > 1.0
        await asyncio.gather(*busy)
        with pytest.raises(ValueError, match="inc: timeout must be a number of seconds above 0, not 0"):
            em.submit(tasks.inc, 1, timeout=0)


async def test_higher_priority_runs_first() -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1, agingSeconds=0) as kernel:
        em = kernel.get_service("execution-manager")
        await em.submit(tasks.slow, 0.05)  # the worker now holds one call at a time
        blocker = em.submit(tasks.slow, 0.3)
        await asyncio.sleep(0.05)
        calls = [em.submit(tasks.stamp, f"low{i}", priority=1) for i in range(3)]
        calls += [em.submit(tasks.stamp, f"high{i}", priority=9) for i in range(3)]
        stats = await em.get_stats()
        assert stats.queued_by_priority == {9: 3, 1: 3}
        await blocker
        results = await asyncio.gather(*calls)
        order = [tag for tag, start, _ in sorted(results, key=lambda r: r[1])]
        assert order == ["high0", "high1", "high2", "low0", "low1", "low2"]
        with pytest.raises(ValueError, match="priority must be an int from 0 to 10, not 11"):
            em.submit(tasks.inc, 1, priority=11)


async def test_project_limit_caps_its_calls_and_others_go_past() -> None:
    async with em_kernel(projectLimits={"batch": 1}) as kernel:
        em = kernel.get_service("execution-manager")
        batch = [em.submit(tasks.stamp, f"b{i}", 0.2, project="batch") for i in range(3)]
        await asyncio.sleep(0.05)
        stats = await em.get_stats()
        assert stats.projects["batch"].model_dump() == {"running": 1, "queued": 2, "limit": 1}
        other = await em.submit(tasks.stamp, "o", 0.0, project="web")
        spans = sorted((s, e) for _, s, e in await asyncio.gather(*batch))
        assert all(a_end <= b_start + 0.01 for (_, a_end), (b_start, _) in itertools.pairwise(spans))
        assert other[2] < spans[-1][0]  # did not wait behind the batch
        em.set_project_limit("batch", 2)
        spans = sorted((s, e) for _, s, e in await asyncio.gather(
            *(em.submit(tasks.stamp, f"c{i}", 0.2, project="batch") for i in range(2))))
        assert spans[1][0] < spans[0][1]  # two at once now
        with pytest.raises(ValueError, match="must be an int >= 1 or None"):
            em.set_project_limit("batch", 0)
        assert (await em.get_stats()).projects["batch"].running == 0


async def test_max_tasks_per_worker_recycles_without_deadlock() -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1, maxTasksPerWorker=3) as kernel:
        em = kernel.get_service("execution-manager")
        recycled: list[dict] = []
        em.subscribe("worker-recycled", lambda _e, p: recycled.append(dict(p)))
        async with asyncio.timeout(30):
            pids = await asyncio.gather(*(em.submit(tasks.whoami) for _ in range(10)))
        assert len(set(pids)) >= 4  # at most 3 calls on each worker
        assert all(pids.count(pid) <= 3 for pid in set(pids))
        assert len(recycled) >= 3 and "maxTasksPerWorker" in recycled[0]["reason"]


async def test_soft_memory_limit_replaces_the_worker_between_calls() -> None:
    settings = {"minWorkers": 1, "maxWorkers": 1, "softMemoryLimit": 150 << 20, "sampleInterval": 0.1}
    async with em_kernel(**settings) as kernel:
        em = kernel.get_service("execution-manager")
        recycled: list[dict] = []
        em.subscribe("worker-recycled", lambda _e, p: recycled.append(dict(p)))
        fat = await em.submit(tasks.hoard, 200)
        for _ in range(100):
            if recycled:
                break
            await asyncio.sleep(0.05)
        assert recycled and "above softMemoryLimit" in recycled[0]["reason"]
        assert await em.submit(tasks.whoami) != fat  # every call still succeeds, on a fresh worker


async def test_cancelling_a_running_call_stops_it(tmp_path: Path) -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        died: list[dict] = []
        em.subscribe("worker-terminated", lambda _e, p: died.append(dict(p)))
        marker = tmp_path / "finished"
        running = em.submit(tasks.touch_after, str(marker), 1.0)
        await asyncio.sleep(0.3)
        assert running.cancel()
        await asyncio.sleep(1.2)
        assert not marker.exists()  # it was stopped, not left to run
        assert died and "was cancelled" in died[0]["reason"]
        assert await em.submit(tasks.inc, 1) == 2


async def test_retry_on_named_exceptions_records_attempts(tmp_path: Path) -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        fut = em.submit(tasks.flaky, str(tmp_path / "a"), 2, retries=3, retry_on=(ConnectionError,))
        assert await fut == 3
        assert [a.number for a in fut.attempts] == [1, 2]
        assert all(a.outcome.startswith("ConnectionError: flaky failure") and a.worker_id for a in fut.attempts)
        with pytest.raises(ConnectionError, match="flaky failure 1"):
            await em.submit(tasks.flaky, str(tmp_path / "b"), 1, retries=3)  # not named: no retry
        with pytest.raises(ConnectionError, match="flaky failure 3") as info:
            await em.submit(tasks.flaky, str(tmp_path / "c"), 5, retries=2, retry_on=(ConnectionError,))
        assert "attempts:\n  1. on local-" in "\n".join(info.value.__notes__)


async def test_a_call_that_keeps_killing_workers_is_given_up() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        with pytest.raises(WorkerCrashedError, match=r"crash\(\) \[task \d+\] was given up after killing 3 workers \(maxCallDeaths\)"):
            async with asyncio.timeout(30):
                await em.submit(tasks.crash, retries=10)
        assert await em.submit(tasks.inc, 1) == 2


async def test_queue_deadline_fails_a_call_that_never_started(tmp_path: Path) -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        await em.submit(tasks.slow, 0.05)  # one call at a time from now on
        busy = em.submit(tasks.slow, 0.5)
        never = tmp_path / "never"
        with pytest.raises(CallTimeoutError, match=r"touch\(.*\) \[task \d+\] did not start within its deadline of 0\.1 s and never will"):
            await em.submit(tasks.touch, str(never), deadline=0.1)
        assert await em.submit(tasks.inc, 1, deadline=5) == 2  # waits behind busy, starts in time
        await busy
        assert not never.exists()


async def test_drain_queue_runs_queued_calls_at_stop_and_refuses_new_ones() -> None:
    kernel = em_kernel(minWorkers=1, maxWorkers=1, drainQueue=True)
    await kernel.start()
    em = kernel.get_service("execution-manager")
    await em.submit(tasks.slow, 0.05)  # one call at a time from now on
    queued = [em.submit(tasks.slow, 0.05, i) for i in range(4)]
    stopping = asyncio.ensure_future(kernel.stop())
    await asyncio.sleep(0.02)
    with pytest.raises(PoolClosedError, match="shutting down and takes no new calls"):
        em.submit(tasks.inc, 1)
    await stopping
    assert await asyncio.gather(*queued) == [0, 1, 2, 3]


async def test_a_running_call_gets_drain_timeout_then_is_stopped() -> None:
    kernel = em_kernel(minWorkers=1, maxWorkers=1, drainTimeout=0.3)
    await kernel.start()
    em = kernel.get_service("execution-manager")
    long = em.submit(tasks.slow, 30)
    await asyncio.sleep(0.1)
    t0 = time.perf_counter()
    await kernel.stop()
    assert time.perf_counter() - t0 < 0.3 + 3.0
    with pytest.raises(WorkerCrashedError, match="was stopped while running slow"):
        await long


async def test_hard_memory_limit_stops_a_leaking_call_naming_rss_and_limit() -> None:
    settings = {"minWorkers": 1, "maxWorkers": 1, "hardMemoryLimit": 150 << 20, "sampleInterval": 0.1}
    async with em_kernel(**settings) as kernel:
        em = kernel.get_service("execution-manager")
        with pytest.raises(WorkerCrashedError, match=r"RSS [\d,]+ bytes above hardMemoryLimit 157,286,400") as info:
            async with asyncio.timeout(20):
                await em.submit(tasks.leak, 25, 40, 0.05)  # up to 1 GB, 25 MiB at a time
        assert "while running leak" in str(info.value)
        assert await em.submit(tasks.inc, 1) == 2


async def test_soft_memory_limit_must_be_below_hard() -> None:
    with pytest.raises(SettingsError, match=r"softMemoryLimit \(200\) must be below hardMemoryLimit \(100\)"):
        await Kernel([], settings={"execution-manager": {"softMemoryLimit": 200, "hardMemoryLimit": 100}}).start()


async def test_soft_timeout_is_raised_inside_the_call(tmp_path: Path) -> None:
    from microkernel.services.execution_manager.errors import SoftTimeoutError

    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        pid = await em.submit(tasks.whoami)
        marker = tmp_path / "cleaned"
        t0 = time.perf_counter()
        assert await em.submit(tasks.sleep_then_clean_up, 5, str(marker), soft_timeout=0.2, timeout=3) == "cleaned up"
        assert time.perf_counter() - t0 < 1.5 and marker.exists()
        with pytest.raises(SoftTimeoutError, match=r"ran past its soft timeout of 0\.2 s") as info:
            await em.submit(tasks.slow, 5, soft_timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert await em.submit(tasks.whoami) == pid  # the worker survived both
        assert await em.submit(tasks.slow, 0.3, "ok", soft_timeout=5) == "ok"  # never fires later
        await asyncio.sleep(0.1)
        assert await em.submit(tasks.whoami) == pid
        with pytest.raises(ValueError, match=r"soft_timeout \(5 s\) must be below timeout \(1 s\)"):
            em.submit(tasks.inc, 1, soft_timeout=5, timeout=1)
        with pytest.raises(ValueError, match="timeout must be a number of seconds above 0, not -1"):
            em.submit(tasks.inc, 1, timeout=-1)


async def test_max_queue_back_pressure() -> None:
    from microkernel.services.execution_manager.errors import QueueFullError

    async with em_kernel(minWorkers=1, maxWorkers=1, maxQueue=4) as kernel:
        em = kernel.get_service("execution-manager")
        pool = em.pool
        full: list[dict] = []
        em.subscribe("queue-full", lambda _e, p: full.append(dict(p)))
        await em.submit(tasks.slow, 0.05)  # one call at a time from now on
        busy = em.submit(tasks.slow, 0.3)
        await asyncio.sleep(0.05)
        queued = [em.submit(tasks.inc, i) for i in range(4)]
        with pytest.raises(QueueFullError, match=r"inc refused: 4 calls already wait \(maxQueue 4\)"):
            em.submit(tasks.inc, 99, block=False)
        assert full and full[0]["queued"] == 4
        held = em.submit(tasks.inc, 100)  # block=True: held until there is room
        stats = await em.get_stats()  # the queue holds at most maxQueue; the held call is counted apart
        assert (stats.queued_tasks, stats.held_tasks) == (4, 1) and len(pool.admission.held) == 1
        assert await held == 101 and await asyncio.gather(*queued) == [1, 2, 3, 4]
        await busy
        # a producer that waits for room keeps the queue (and memory) bounded
        most = 0
        futures = []
        for i in range(60):
            await em.room()
            futures.append(em.submit(tasks.slow, 0.005, i))
            most = max(most, len(pool.sched.queue) + len(pool.admission.held))
        assert most <= 4 and not pool.admission.held
        assert await asyncio.gather(*futures) == list(range(60))


async def test_sigkill_from_outside_while_the_call_runs(tmp_path: Path) -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        flag = tmp_path / "running"
        victim = em.submit(tasks.announce_then_wait, str(flag), 30)
        for _ in range(200):
            if flag.exists():
                break
            await asyncio.sleep(0.01)
        pid = int(flag.read_text())
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match=rf"\(pid {pid}\) killed by signal SIGKILL while running announce_then_wait"):
            await victim
        assert await em.submit(tasks.inc, 1) == 2


async def test_calls_that_kill_workers_concurrently_lose_nothing() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        killers = [em.submit(f) for f in (tasks.crash, tasks.sigkill_self, tasks.segfault) * 2]
        normal = [em.submit(tasks.slow, 0.01, i) for i in range(12)]
        async with asyncio.timeout(60):
            killed = await asyncio.gather(*killers, return_exceptions=True)
            results = await asyncio.gather(*normal)
        assert all(isinstance(k, WorkerCrashedError) for k in killed)
        assert results == list(range(12))  # none lost: those held behind a crash ran elsewhere
        assert await em.submit(tasks.inc, 1) == 2
        for _ in range(100):
            if (await em.get_stats()).workers == 2:
                break
            await asyncio.sleep(0.05)
        stats = await em.get_stats()
        assert stats.workers == 2, [(w.id, w.state) for w in stats.worker_details]  # never above maxWorkers


async def test_a_watch_sees_each_attempt_before_its_worker_does_and_each_log_line(tmp_path: Path) -> None:
    from microkernel.services.execution_manager import watching

    marker = tmp_path / "marker"
    seen: list[tuple[str, object, object]] = []

    class Watch:
        def sent(self, attempt: object) -> None:
            # The worker has not begun it: the marker its first attempt writes is not there yet.
            seen.append(("sent", attempt.attempt, marker.exists()))  # type: ignore[attr-defined]

        def logged(self, attempt: object, level: str, message: str, fields: object) -> None:
            seen.append(("log", level, message))

    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        with watching(Watch()):
            crashing = em.submit(tasks.crash_unless_marker, str(marker), retries=1)
            logging_call = em.submit(tasks.log_lines, 2)
        unwatched = em.submit(tasks.log_lines, 1)
        assert await crashing == "survived" and await logging_call == 2 and await unwatched == 1
    assert ("sent", 1, False) in seen and ("sent", 2, True) in seen  # the retry is seen too
    assert [s for s in seen if s[0] == "log"] == [("log", "info", "line 0"), ("log", "info", "line 1")]
