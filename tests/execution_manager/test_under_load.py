"""The scheduler's promises on real worker processes, with every worker busy.

Each promise is tried with call durations unknown (a function the pool has never run)
and known (measured short first, so calls may be sent ahead to busy workers: the
case that used to break them).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import QueueFullError, WorkerCrashedError
from microkernel.services.execution_manager.monitoring.history import Timings
from tests import tasks
from tests.conftest import EM_LOCAL
from tests.nodes import until

pytestmark = pytest.mark.anyio
DURATIONS = ["unknown", "known"]


def em_kernel(**custom: object) -> Kernel:
    return Kernel([], settings={"execution-manager": {**EM_LOCAL, "agingSeconds": 0, **custom}})


async def measure_short(em: object, fn: object, *args: object, times: int = 30) -> None:
    """Run ``fn`` a few times so the pool knows it is short."""
    for _ in range(times):
        await em.submit(fn, *args)  # type: ignore[attr-defined]


async def busy(em: object, seconds: float, workers: int) -> list[asyncio.Future]:
    """Occupy every worker for ``seconds``; returns once each has begun."""
    blockers = [em.submit(tasks.stamp, "blocker", seconds) for _ in range(workers)]  # type: ignore[attr-defined]
    pool = em.pool  # type: ignore[attr-defined]
    await until(lambda: sum(1 for w in pool.fleet.members if w.running) >= workers, 10, "every worker busy")
    await asyncio.sleep(0.05)  # they run (not just sent)
    return blockers


@pytest.mark.parametrize("durations", DURATIONS)
async def test_with_every_worker_busy_queued_calls_start_by_priority_then_in_order(durations: str) -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        if durations == "known":
            await measure_short(em, tasks.stamp, "warm", 0.0)
        blockers = await busy(em, 0.5, 2)
        priorities = [(i * 7) % 11 for i in range(30)]  # 0-10, each several times, mixed
        calls = [em.submit(tasks.stamp, f"{i}", 0.01, priority=pr) for i, pr in enumerate(priorities)]
        async with asyncio.timeout(30):
            results = await asyncio.gather(*calls)
            await asyncio.gather(*blockers)
        started = {int(tag): start for tag, start, _ in results}
        expected = sorted(range(30), key=lambda i: (-priorities[i], i))  # higher first, then FIFO
        # Two workers start two calls at about the same moment; a call that clearly
        # started before another must come first in the expected order.
        rank = {i: n for n, i in enumerate(expected)}
        for a in range(30):
            for b in range(30):
                if started[a] + 0.005 < started[b]:
                    assert rank[a] < rank[b], (a, priorities[a], b, priorities[b])


@pytest.mark.parametrize("durations", DURATIONS)
async def test_an_idle_worker_takes_the_short_calls_while_a_long_one_runs(durations: str) -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        if durations == "known":
            await measure_short(em, tasks.stamp, "warm", 0.0)  # the long call is of a short function
        long = em.submit(tasks.stamp, "long", 3.0)
        shorts = [em.submit(tasks.stamp, f"short-{i}", 0.01) for i in range(10)]
        async with asyncio.timeout(20):
            done_short = [end for _, _, end in await asyncio.gather(*shorts)]
            _, _, long_end = await long
        assert max(done_short) < long_end - 2.0  # the other worker took them all, at once


@pytest.mark.parametrize("durations", DURATIONS)
async def test_a_call_cancelled_before_it_started_never_starts(tmp_path: Path, durations: str) -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        if durations == "known":
            await measure_short(em, tasks.touch, str(tmp_path / "warm"))
        blockers = await busy(em, 0.4, 2)
        markers = [tmp_path / f"never-{i}" for i in range(6)]
        waiting = [em.submit(tasks.touch, str(m)) for m in markers]
        for fut in waiting:
            assert fut.cancel()
        async with asyncio.timeout(20):
            await asyncio.gather(*blockers)
            assert await em.submit(tasks.inc, 1) == 2
        await asyncio.sleep(0.2)
        assert not any(m.exists() for m in markers)  # the side effect proves none ran
        stats = await em.get_stats()
        assert stats.queued_tasks == 0 and stats.active_tasks == 0


async def test_the_queue_deadline_and_the_timeout_are_apart() -> None:
    from microkernel.services.execution_manager.errors import CallTimeoutError

    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        blockers = await busy(em, 0.6, 1)
        ran = em.submit(tasks.stamp, "ran", 0.05, timeout=0.3, deadline=2.0)  # waits 0.6 s, then runs 0.05 s
        expired = em.submit(tasks.stamp, "expired", 0.0, deadline=0.2)
        async with asyncio.timeout(10):
            with pytest.raises(CallTimeoutError, match=r"did not start within its deadline of 0\.2 s"):
                await expired
            assert (await ran)[0] == "ran"
            await asyncio.gather(*blockers)


async def test_a_draining_worker_gets_no_new_call() -> None:
    async with em_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        blockers = await busy(em, 0.8, 2)
        draining = em.pool.fleet.members[0]
        retiring = asyncio.ensure_future(em.drain_worker(draining.id))
        await asyncio.sleep(0.05)
        pids = [em.submit(tasks.whoami) for _ in range(8)]
        async with asyncio.timeout(20):
            got = set(await asyncio.gather(*pids))
            await asyncio.gather(*blockers)
            await retiring
        assert draining.backend.info().pid not in got


async def test_max_queue_counts_exactly_the_calls_not_started() -> None:
    async with em_kernel(minWorkers=1, maxWorkers=1, maxQueue=3) as kernel:
        em = kernel.get_service("execution-manager")
        await measure_short(em, tasks.inc, 1)  # even calls that could go ahead count as waiting
        blockers = await busy(em, 0.5, 1)
        waiting = [em.submit(tasks.inc, i) for i in range(3)]
        assert (await em.get_stats()).queued_tasks == 3
        with pytest.raises(QueueFullError, match=r"inc refused: 3 calls already wait \(maxQueue 3\)"):
            em.submit(tasks.inc, 9, block=False)
        held = em.submit(tasks.inc, 10)  # block=True: held until there is room
        stats = await em.get_stats()
        assert (stats.queued_tasks, stats.held_tasks) == (3, 1)  # never more queued than maxQueue
        async with asyncio.timeout(10):
            assert await asyncio.gather(*waiting, held) == [1, 2, 3, 11]
            await asyncio.gather(*blockers)


async def test_queued_calls_start_a_worker_and_an_idle_one_retires_never_a_busy_one() -> None:
    settings = {"minWorkers": 1, "maxWorkers": 4, "monitorInterval": 0.2, "sampleInterval": 0.1,
                "idleTimeout": 0.3, "scaleCooldown": 0, "scaleDownThreshold": 0.79}  # (a busy test machine's CPU)
    async with em_kernel(**settings) as kernel:
        em = kernel.get_service("execution-manager")
        started: list[float] = []
        em.subscribe("worker-started", lambda _e, _p: started.append(time.monotonic()))
        t0 = time.monotonic()
        long = em.submit(tasks.stamp, "long", 4.0)
        queued = [em.submit(tasks.stamp, f"q{i}", 0.3) for i in range(6)]
        await until(lambda: len(em.pool.fleet.members) == 4, 10, "the pool to grow to maxWorkers")
        assert started and started[0] - t0 < 0.2 + 2.0  # a monitor tick, plus a process start
        async with asyncio.timeout(10):
            await asyncio.gather(*queued)
        long_pid = next(w.backend.info().pid for w in em.pool.fleet.members if w.running)
        retired: list[str] = []
        decided: list[object] = []  # the decision behind each retirement, as get_stats() shows it then
        em.subscribe("scaled-down", lambda _e, payload: (retired.append(payload["worker_id"]),
                                                          decided.append(em.pool.scaling.last_decision)))
        # the host's CPU is low (one call sleeps): idle workers go, one a tick, never the busy one
        await until(lambda: len(em.pool.fleet.members) <= 3, 10, "an idle worker to retire")
        assert retired
        decision = decided[0]
        assert decision.rule == "retire-idle" and decision.worker == retired[0]  # type: ignore[attr-defined]
        assert decision.idle_seconds >= 0.3 and decision.waiting == 0  # type: ignore[attr-defined]
        assert decision.cpu_percent < 79 and decision.free_workers >= 1  # type: ignore[attr-defined]
        assert (await em.get_stats()).scaling is not None  # kept as fields, "steady" included
        assert long_pid in {w.backend.info().pid for w in em.pool.fleet.members}  # never the busy one
        assert (await long)[0] == "long"


@pytest.mark.parametrize("kill", [tasks.crash, tasks.segfault])
async def test_with_the_shipped_defaults_no_call_takes_the_kernel_down(kill: object) -> None:
    async with Kernel([]) as kernel:  # the manifest's own settings
        em = kernel.get_service("execution-manager")
        with pytest.raises(WorkerCrashedError) as info:
            async with asyncio.timeout(20):
                await em.submit(kill)
        text = str(info.value)
        assert "worker local-" in text and "[task " in text and ("exited with code" in text or "SIGSEGV" in text)
        assert await em.submit(tasks.whoami) != os.getpid()  # the kernel serves the next call, elsewhere


async def test_bad_delivery_options_are_refused_at_submit_naming_the_field() -> None:
    from kernel.errors import SettingsError

    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        for options, error, match in [
            ({"priority": 11}, ValueError, r"inc: priority must be an int from 0 to 10, not 11"),
            ({"priority": "high"}, ValueError, r"inc: priority must be an int"),
            ({"timeout": 0}, ValueError, r"inc: timeout must be a number of seconds above 0, not 0"),
            ({"timeout": -1.5}, ValueError, r"inc: timeout must be a number of seconds above 0, not -1.5"),
            ({"deadline": "soon"}, ValueError, r"inc: deadline must be a number of seconds above 0"),
            ({"retries": -1}, ValueError, r"inc: retries must be an int >= 0, not -1"),
            ({"retry_on": (ValueError, "ConnectionError")}, TypeError,
             r"inc: retry_on must name exception types, not 'ConnectionError'"),
        ]:
            with pytest.raises(error, match=match):
                em.submit(tasks.inc, 1, **options)
        assert (await em.get_stats()).queued_tasks == 0  # nothing half-submitted
        assert await em.submit(tasks.inc, 1) == 2
    with pytest.raises(SettingsError, match=r"heartbeatTimeOut"):
        await Kernel([], settings={"execution-manager": {"heartbeatTimeOut": 3}}).start()


async def test_a_call_sent_ahead_is_timed_by_its_run_not_by_its_wait() -> None:
    # Measured short, calls are sent ahead to one busy worker and wait there behind one
    # another: each is timed as the worker ran it (the scheduler's measure and /metrics'
    # durations), never counting its wait, which here is several times longer.
    async with em_kernel(minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        await measure_short(em, time.sleep, 0.001)
        em.pool.tally.timings = timings = Timings()  # what /metrics reads, with custom.http
        calls = [em.submit(time.sleep, 0.001) for _ in range(40)]
        await asyncio.gather(*calls)
        seen = [c.current.ran for c in calls]
        assert all(r is not None and 0.001 <= r < 0.25 for r in seen), seen
        waited = max(time.perf_counter() - c.current.started for c in calls)  # the last: behind the others
        assert sum(timings.duration.counts) == 40 and timings.duration.total == pytest.approx(sum(seen))
        assert max(seen) < waited
        assert em.pool.sched.durations.means["sleep"] < 0.005  # still known short: its waits were not counted


async def test_lowering_max_workers_with_every_worker_busy_drains_never_kills() -> None:
    """Bounds set on request while every worker runs a call: the ones above the new
    maximum take no new call, finish what they run, then go; nothing fails or runs twice."""
    async with em_kernel(minWorkers=3, maxWorkers=3) as kernel:
        em = kernel.get_service("execution-manager")
        blockers = await busy(em, 1.0, 3)
        queued = [em.submit(tasks.stamp, f"q{i}", 0.05) for i in range(6)]
        decision = em.pool.scaling.set_bounds(min_workers=1, max_workers=1)
        assert decision == "bounds set to 1..1 on request"
        assert sum(1 for w in em.pool.fleet.members if not w.retiring) == 1  # marked at once, not a turn later
        results = await asyncio.wait_for(asyncio.gather(*blockers, *queued), 20)
        assert [r[0] for r in results] == ["blocker"] * 3 + [f"q{i}" for i in range(6)]  # all ran, once
        await until(lambda: len(em.pool.fleet.members) == 1, 10, "the pool to shrink to its new maximum")
        stats = await em.get_stats()
        assert stats.tasks_failed == 0 and stats.max_workers == 1 and stats.scaling.rule == "bounds"


async def test_memory_over_the_limit_vetoes_starting_a_worker_with_every_worker_busy() -> None:
    """Calls wait and every worker is busy, but memory is over memoryLimit (set below
    what any machine uses): no worker starts, the decision says why, and the calls
    still run, on the worker there is."""
    async with em_kernel(minWorkers=1, maxWorkers=3, memoryLimit=0.001, sampleInterval=0.05,
                         monitorInterval=0.1) as kernel:
        em = kernel.get_service("execution-manager")
        await until(lambda: em.pool.scaling.memory_percent > 0, 10, "a first memory sample")
        blockers = await busy(em, 0.6, 1)
        queued = [em.submit(tasks.stamp, f"q{i}", 0.01) for i in range(4)]
        await asyncio.sleep(0.4)  # several ticks with calls waiting
        assert len(em.pool.fleet.members) == 1 and em.pool.fleet.starting == 0
        stats = await em.get_stats()
        assert stats.scaling is not None and stats.scaling.rule == "memory-veto", stats.scaling
        assert "memory" in stats.scaling.reason and stats.scaling.waiting >= 1
        results = await asyncio.wait_for(asyncio.gather(*blockers, *queued), 20)
        assert [r[0] for r in results] == ["blocker"] + [f"q{i}" for i in range(4)]
