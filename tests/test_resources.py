"""Resource-aware placement: tables without processes, then real workers."""

from __future__ import annotations

import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import UnsatisfiableError
from microkernel.services.execution_manager.policy import START, WAIT, Placement, Worker
from microkernel.services.execution_manager.resources import fits, place_with, score, unsatisfiable

from . import tasks
from .conftest import EM_LOCAL

GPU = {"cpu": 1.0, "memory": 8e9, "gpu": 1.0}
CPU = {"cpu": 1.0, "memory": 8e9}


@pytest.mark.parametrize(
    ("offer", "request_", "ok"),
    [(CPU, {"cpu": 1}, True), (CPU, {"gpu": 1}, False), (GPU, {"gpu": 1, "memory": 4e9}, True),
     (GPU, {"memory": 9e9}, False), (CPU, {}, True)],
)
def test_fits(offer, request_, ok) -> None:
    assert fits(offer, request_) is ok


def test_score_prefers_tight_fit_then_low_load_then_idle_cpu() -> None:
    big = {"memory": 16e9}
    small = {"memory": 4e9}
    request = {"memory": 4e9}
    w = Worker("w", limit=4)
    assert score(w, small, request) > score(w, big, request)  # bin packing
    assert score(Worker("a", running=0, limit=4), small, request) > score(Worker("b", running=3, limit=4), small, request)
    assert score(Worker("a", cpu_percent=0), small, request) > score(Worker("b", cpu_percent=90), small, request)


def test_place_with_filters_then_scores() -> None:
    workers = [Worker("cpu-only"), Worker("gpu-busy", running=1), Worker("gpu")]
    offers = {"cpu-only": CPU, "gpu-busy": GPU, "gpu": GPU}
    decision, scores = place_with(workers, offers, {"gpu": 1}, can_start=True, new_offer=GPU)
    assert decision == Placement("worker", "gpu") and set(scores) == {"gpu"}
    busy = [Worker("gpu", running=1)]
    assert place_with(busy, {"gpu": GPU}, {"gpu": 1}, can_start=True, new_offer=GPU).placement == START
    assert place_with(busy, {"gpu": GPU}, {"gpu": 1}, can_start=False, new_offer=GPU).placement == WAIT
    assert place_with(busy, {"gpu": GPU}, {"gpu": 1}, can_start=True, new_offer=CPU).placement == WAIT


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
        assert last["worker"] in last["scores"] and len(last["scores"]) == 2
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
