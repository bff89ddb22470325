"""@distributed services: replicas, pinned state travelling on assign, release, retirement."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kernel import BaseService, Kernel, distributed
from microkernel.services.execution_manager.errors import MethodNotFoundError, WorkerCrashedError
from tests.conftest import EM_LOCAL, EXAMPLES, write_service

pytestmark = pytest.mark.anyio

COUNTER = """
import os
from kernel import BaseService, distributed

@distributed
class Counter(BaseService):
    def __init__(self):
        self.n = 0
        self.log = []

    def incr(self, by=1):
        self.n += by
        self.log.append(by)
        return self.n

    async def incr_async(self, by=1):
        return self.incr(by)          # a call on self runs inline, plainly

    def pid(self):
        return os.getpid()

    def die(self):
        os._exit(7)
"""


def kernel_with_counter(tmp_path: Path, **custom: object) -> Kernel:
    write_service(tmp_path, "counter", {"global": True}, COUNTER)
    return Kernel([tmp_path], settings={"execution-manager": {**EM_LOCAL, **custom}})


async def test_unassigned_calls_run_on_replicas(tmp_path: Path) -> None:
    async with kernel_with_counter(tmp_path) as kernel:
        svc = kernel.get_service("counter")
        assert await svc.incr(5) == 5
        assert await svc.incr(5) == 5  # each call on a fresh replica
        assert await svc.incr_async(2) == 2
        assert svc.n == 0  # nothing written back
        assert await svc.pid() != os.getpid()


async def test_assigned_instance_lives_on_its_worker_and_comes_back(tmp_path: Path) -> None:
    async with kernel_with_counter(tmp_path) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        svc.n = 100
        wid = await em.assign_optimal_worker(svc)
        assert em.worker_of(svc) == wid
        assert await em.assign_optimal_worker(svc) == wid  # idempotent
        worker_pid = next(w.pid for w in (await em.get_stats()).worker_details if w.id == wid)
        assert await svc.pid() == worker_pid
        results = await asyncio.gather(*(svc.incr(1) for _ in range(50)))
        assert results == list(range(101, 151))  # in call order, on one copy
        assert await svc.incr_async(10) == 160
        assert svc.n == 100  # the local copy is stale while pinned
        assert (await em.get_stats()).pinned_instances == 1
        await em.release_worker(svc)
        assert svc.n == 160 and svc.log[-1] == 10 and len(svc.log) == 51
        assert em.worker_of(svc) is None
        assert svc._kernel is kernel  # kernel bindings kept


async def test_release_without_await_calls_wait_for_the_state(tmp_path: Path) -> None:
    async with kernel_with_counter(tmp_path) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        await em.assign_optimal_worker(svc)
        await svc.incr(3)
        em.release_worker(svc)  # not awaited
        assert await svc.incr(1) == 4  # ran on a replica of the state brought back
        assert svc.n == 3


async def test_instance_moves_with_its_state_when_its_worker_retires(tmp_path: Path) -> None:
    async with kernel_with_counter(tmp_path) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        moved: list[dict] = []
        em.subscribe("instance-moved", lambda _e, p: moved.append(dict(p)))
        first = await em.assign_optimal_worker(svc)
        await svc.incr(7)
        pending = [svc.incr(1) for _ in range(5)]  # sent before the move
        retiring = asyncio.ensure_future(em.drain_worker(first))
        during = [svc.incr(1) for _ in range(5)]  # made while it moves: they wait
        await retiring
        assert [await c for c in pending + during] == list(range(8, 18))
        second = em.worker_of(svc)
        assert second is not None and second != first
        assert moved == [{"worker_id": second, "from_worker": first, "instance": "Counter"}]
        assert await svc.incr(1) == 18
        await em.release_worker(svc)
        assert svc.n == 18


async def test_retired_last_worker_brings_the_instance_home(tmp_path: Path) -> None:
    async with kernel_with_counter(tmp_path, minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        wid = await em.assign_optimal_worker(svc)
        await svc.incr(4)
        await em.drain_worker(wid)
        assert em.worker_of(svc) is None and svc.n == 4


async def test_pinned_worker_crash_fails_the_call_and_unpins(tmp_path: Path) -> None:
    async with kernel_with_counter(tmp_path) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        lost: list[dict] = []
        em.subscribe("instance-lost", lambda _e, p: lost.append(dict(p)))
        wid = await em.assign_optimal_worker(svc)
        await svc.incr(2)
        with pytest.raises(WorkerCrashedError, match=rf"worker {wid} .* exited with code 7 while running Counter.die"):
            await svc.die()
        assert lost == [{"worker_id": wid, "instance": "Counter"}]
        assert em.worker_of(svc) is None
        assert await svc.incr(1) == 1  # back to per-call placement, state as of assignment


async def test_missing_method_and_non_distributed_class(tmp_path: Path) -> None:
    async with kernel_with_counter(tmp_path) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        with pytest.raises(MethodNotFoundError, match=r"Counter \(service 'counter'\) has no method 'nope' on worker"):
            await em.call_method(svc, "nope", (), {})

        class Plain(BaseService):
            pass

        with pytest.raises(TypeError, match="Plain is not @distributed"):
            await em.assign_optimal_worker(Plain())


async def test_examples_and_instances_made_by_hand() -> None:
    async with Kernel([EXAMPLES], settings={"execution-manager": EM_LOCAL}) as kernel:
        em = kernel.get_service("execution-manager")
        reporter = kernel.get_service("reporter")
        assert await reporter.prime_density(10_000, parts=4) == "1229 primes below 10,000 (12.29%)"
        from microkernel.services.examples.prime_counter.service import PrimeCounter

        mine = PrimeCounter()  # not made by the kernel: assignment binds it
        await em.assign_optimal_worker(mine)
        assert await mine.count_range(0, 100) == 25
        await em.release_worker(mine)
        assert mine.counted == 100


async def test_without_an_execution_manager_calls_run_here() -> None:
    @distributed
    class Local(BaseService):
        def __init__(self) -> None:
            self.hits = 0

        def hit(self) -> int:
            self.hits += 1
            return os.getpid()

    obj = Local()
    assert await obj.hit() == os.getpid()
    assert obj.hits == 1


OPTIONED = """
import time
from kernel import BaseService, distributed, method_options

@distributed
class Jobs(BaseService):
    def stamp(self, tag):
        start = time.time()
        time.sleep(0.02)
        return tag, start

    @method_options(priority=9)
    def urgent(self, tag):
        return self.stamp(tag)

    @method_options(timeout=0.3)
    def hang(self):
        time.sleep(30)

    def block(self, seconds):
        time.sleep(seconds)
"""


async def test_method_options_call_options_and_manifest_priority(tmp_path: Path) -> None:
    from kernel import call_options
    from microkernel.services.execution_manager.errors import CallTimeoutError

    write_service(tmp_path, "jobs", {"global": True, "priority": 2}, OPTIONED)
    settings = {"execution-manager": {**EM_LOCAL, "minWorkers": 1, "maxWorkers": 1, "agingSeconds": 0}}
    async with Kernel([tmp_path], settings=settings) as kernel:
        jobs = kernel.get_service("jobs")
        await jobs.block(0.05)  # the worker now holds one call at a time
        blocker = jobs.block(0.3)
        await asyncio.sleep(0.05)
        calls = [jobs.stamp("manifest-2")]                # the manifest's priority 2
        calls.append(jobs.urgent("method-9"))             # @method_options(priority=9)
        with call_options(priority=5):
            calls.append(jobs.stamp("override-5"))        # the block wins over the manifest
        with call_options(priority=10):
            calls.append(jobs.urgent("override-10"))      # ... and over the method
        await blocker
        order = [tag for tag, _ in sorted(await asyncio.gather(*calls), key=lambda r: r[1])]
        assert order == ["override-10", "method-9", "override-5", "manifest-2"]
        with pytest.raises(CallTimeoutError, match=r"Jobs\.hang\(\) \[task \d+\] did not finish within 0\.3 s"):
            await jobs.hang()
        with pytest.raises(TypeError, match=r"unknown call options \['prio'\]"), call_options(prio=1):
            pass
