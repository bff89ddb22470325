"""Resource-aware placement: tables without processes, then real workers."""

from __future__ import annotations

import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import UnsatisfiableError
from microkernel.services.execution_manager.scheduling import Scheduler, fits, tightness, unsatisfiable
from microkernel.services.execution_manager.scheduling.stimuli import CallSpec, Send, Submitted, WorkerUp
from tests import tasks
from tests.conftest import EM_LOCAL

GPU = {"cpu": 1.0, "memory": 8e9, "gpu": 1.0}
CPU = {"cpu": 1.0, "memory": 8e9}


@pytest.mark.parametrize(
    ("offer", "request_", "ok"),
    [(CPU, {"cpu": 1}, True), (CPU, {"gpu": 1}, False), (GPU, {"gpu": 1, "memory": 4e9}, True),
     (GPU, {"memory": 9e9}, False), (CPU, {}, True)],
)
def test_fits(offer, request_, ok) -> None:
    assert fits(offer, request_) is ok


def test_tightness_prefers_the_worker_the_call_fills_most() -> None:
    request = {"memory": 4e9}
    assert tightness({"memory": 4e9}, request) > tightness({"memory": 16e9}, request)
    assert tightness(CPU, {}) == 1.0


def test_the_scheduler_takes_the_tightest_free_worker_that_fits() -> None:
    s = Scheduler()
    for wid, offer in (("cpu-only", CPU), ("gpu-big", {**GPU, "memory": 64e9}), ("gpu", GPU)):
        s.handle(WorkerUp(0.0, wid, 1, offer))
    [send] = s.handle(Submitted(0.0, CallSpec(1, resources={"gpu": 1, "memory": 4e9})))
    assert send == Send(1, 1, "gpu")  # bin packing: the big one stays free for a big call
    [send] = s.handle(Submitted(0.0, CallSpec(2, resources={"gpu": 1})))
    assert send == Send(2, 1, "gpu-big")
    assert s.handle(Submitted(0.0, CallSpec(3, resources={"gpu": 1}))) == []  # both busy: it waits


def test_unsatisfiable() -> None:
    assert unsatisfiable([CPU], CPU, {"gpu": 1})
    assert not unsatisfiable([CPU], GPU, {"gpu": 1})  # a new worker would do
    assert not unsatisfiable([], None, {"gpu": 1})  # unknown: not refused up front
    assert not unsatisfiable([GPU], CPU, {"gpu": 1})


@pytest.mark.anyio
async def test_calls_with_resources_on_real_workers() -> None:
    custom = {**EM_LOCAL, "executorOptions": {"labels": {"gpu": 1}}}
    async with Kernel([], settings={"execution-manager": custom}) as kernel:
        em = kernel.get_service("execution-manager")
        assert await em.submit(tasks.inc, 1, resources={"gpu": 1, "cpu": 1}) == 2
        stats = await em.get_stats()
        last = stats.recent_placements[-1]
        assert last["worker"] in last["fits"] and len(last["fits"]) == 2
        with pytest.raises(UnsatisfiableError, match=r"inc asks for \{'gpu': 2\.0\}, which no local worker can ever offer"):
            em.submit(tasks.inc, 1, resources={"gpu": 2})
        with pytest.raises(UnsatisfiableError, match="tpu"):
            em.submit(tasks.inc, 1, resources={"tpu": 1})
        with pytest.raises(ValueError, match="amounts >= 0"):
            em.submit(tasks.inc, 1, resources={"gpu": -1})
        # calls that need a worker that is busy wait for it; none is lost
        results = [em.submit(tasks.slow, 0.05, i, resources={"memory": 1e6}) for i in range(6)]
        for i, fut in enumerate(results):
            assert await fut == i
