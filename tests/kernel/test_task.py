"""From inside a running call (kernel.task): progress to the caller, logs into the
kernel's log, requests to the kernel, on real workers, the kernel's own threads and a
real node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kernel import Kernel, task
from kernel.errors import RequestError
from tests.conftest import EM_LOCAL, write_service
from tests.nodes import TOKEN, start_node, stop_node, until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

STORE = """
import asyncio
from kernel import BaseService, distributed, task

class Store(BaseService):
    def __init__(self):
        self.saved = []

    def save(self, item):
        self.saved.append(item)
        return len(self.saved)

    async def total(self):
        await asyncio.sleep(0)
        return sum(self.saved)

    def boom(self):
        raise KeyError("no such row")

@distributed
class Crunch(BaseService):
    def run(self, n):
        for i in range(n):
            task.progress((i + 1) / n, f"row {i + 1}")
            task.call_service("store", "save", i)
        task.log("crunched", rows=n)
        return task.call_service("store", "total")

    async def run_async(self, n):
        task.progress(0.5, "half")
        return await task.acall_service("store", "save", n)
"""


def steps(n: int) -> int:
    for i in range(n):
        task.progress((i + 1) / n, f"step {i + 1}")
        import time

        time.sleep(0.06)
    return os.getpid()


def ask(route: str, *args: Any) -> Any:
    try:
        return task.request(route, *args)
    except RequestError as exc:
        return f"RequestError: {exc}"


def ask_service(service: str, method: str) -> Any:
    return task.call_service(service, method)


def whoami() -> tuple[int, Any]:
    return os.getpid(), task.current()


def kernel_with_store(tmp_path: Path, **custom: Any) -> Kernel:
    write_service(tmp_path, "store", {"global": True, "entry": "service:Store"}, STORE)
    write_service(tmp_path, "crunch", {"global": True, "entry": "service:Crunch"}, STORE)
    return Kernel([tmp_path], settings={"execution-manager": {**EM_LOCAL, **custom}})


async def test_progress_reaches_the_handle(tmp_path: Path) -> None:
    async with Kernel([], settings={"execution-manager": EM_LOCAL}) as kernel:
        em = kernel.get_service("execution-manager")
        handle = em.submit(steps, 4)
        seen: list[Any] = []
        handle.on_progress(seen.append)
        updates = [u async for u in handle.progress_updates()]
        pid = await handle
        assert pid != os.getpid()
        assert [u.fraction for u in updates] == [0.25, 0.5, 0.75, 1.0]
        assert updates[-1].message == "step 4" and seen == updates and handle.progress == updates[-1]


async def test_service_requests_logs_and_progress_from_a_distributed_method(tmp_path: Path) -> None:
    async with kernel_with_store(tmp_path) as kernel:
        store, crunch = kernel.get_service("store"), kernel.get_service("crunch")
        with capture_logs() as logs:
            handle = crunch.run(4)
            fractions: list[float] = []
            handle.on_progress(lambda u: fractions.append(u.fraction))
            assert await handle == 0 + 1 + 2 + 3
        assert store.saved == [0, 1, 2, 3]  # the kernel's own instance was called
        # Reports closer than 50 ms are skipped, except the first and the last.
        assert fractions[0] == 0.25 and fractions[-1] == 1.0 and fractions == sorted(fractions)
        line = next(e for e in logs if e["event"] == "crunched")
        assert line["rows"] == 4 and line["call"] == "Crunch.run" and line["worker_id"].startswith("local-")
        assert isinstance(line["task_id"], int) and line["log_level"] == "info"
        assert await crunch.run_async(10) == 5  # async code, awaited request


async def test_bad_requests_raise_in_the_call_and_the_worker_survives(tmp_path: Path) -> None:
    async with kernel_with_store(tmp_path, minWorkers=1, maxWorkers=1) as kernel:
        em = kernel.get_service("execution-manager")
        pid = (await em.submit(whoami))[0]
        refused = await em.submit(ask, "no-such-route")
        assert "unknown route 'no-such-route'" in refused and "known: service, stats" in refused
        with pytest.raises(RequestError, match=r"asked for service 'nope'.*no service named 'nope'"):
            await em.submit(ask_service, "nope", "x")
        with pytest.raises(RequestError, match="has no public method '_private'"):
            await em.submit(ask_service, "store", "_private")
        with pytest.raises(KeyError, match="no such row"):  # the service's own error, by type
            await em.submit(ask_service, "store", "boom")
        assert (await em.submit(whoami))[0] == pid  # same worker: nothing crashed
        stats = await em.submit(ask, "stats")
        assert stats["workers"] == 1 and stats["worker_details"][0]["pid"] == pid


async def test_add_route_and_calls_outside_a_task(tmp_path: Path) -> None:
    async with Kernel([], settings={"execution-manager": EM_LOCAL}) as kernel:
        em = kernel.get_service("execution-manager")
        em.add_route("double", lambda call, x: (call.label, 2 * x))
        assert await em.submit(ask, "double", 21) == ("ask", 42)
        with pytest.raises(ValueError, match="already served"):
            em.add_route("double", lambda call, x: x)
        with pytest.raises(ValueError, match=r"between 0 and 1, not 1\.5"):
            await em.submit(task.progress, 1.5)
        with pytest.raises(ValueError, match="log level must be one of"):
            await em.submit(task.log, "x", level="loud")
    task.progress(0.5)  # outside a call: nothing happens
    task.log("nobody listens")
    assert task.current() is None
    with pytest.raises(RequestError, match="only inside a call"):
        task.request("stats")


async def test_in_process_calls_reach_the_kernel_too(tmp_path: Path) -> None:
    settings = {"nodeType": "inmemory", "minWorkers": 1, "maxWorkers": 1, "inProcess": False}
    write_service(tmp_path, "store", {"global": True, "entry": "service:Store"}, STORE)
    async with Kernel([tmp_path], settings={"execution-manager": settings}) as kernel:
        em = kernel.get_service("execution-manager")
        handle = em.submit(steps, 2)
        assert [u.fraction async for u in handle.progress_updates()] == [0.5, 1.0]
        assert await handle == os.getpid()
        assert await em.submit(ask_service, "store", "total") == 0
        pid, info = await em.submit(whoami)
        assert pid == os.getpid() and info.worker_id == em.pool.fleet.members[0].id


async def test_progress_logs_and_requests_cross_a_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_service(tmp_path, "store", {"global": True, "entry": "service:Store"}, STORE)
    settings = {"minWorkers": 0, "maxWorkers": 0, "inProcess": False, "nodes": {"port": 0}}
    monkeypatch.setenv("MICROKERNEL_NODE_TOKEN", TOKEN)
    async with Kernel([tmp_path], settings={"execution-manager": settings}) as kernel:
        em = kernel.get_service("execution-manager")
        node = await start_node(em.nodes_address, slots=1, node_id="chatty")
        try:
            await until(lambda: len(em.pool.fleet.members) == 1)
            with capture_logs() as logs:
                handle = em.submit(steps, 3)
                updates = [u.fraction async for u in handle.progress_updates()]
                await handle
                assert await em.submit(ask_service, "store", "total") == 0
                refused = await em.submit(ask, "nope")
            assert updates == pytest.approx([1 / 3, 2 / 3, 1.0])
            assert "unknown route 'nope'" in refused
            assert not [e for e in logs if e.get("log_level") == "error"]
        finally:
            await stop_node(node)


async def test_standard_logging_inside_a_call_lands_in_the_kernels_log() -> None:
    from tests import tasks

    async with Kernel([], settings={"execution-manager": EM_LOCAL}) as kernel:
        em = kernel.get_service("execution-manager")
        with capture_logs() as logs:
            assert await em.submit(tasks.log_with_logging, 7) == 7
            await until(lambda: any(e["event"] == "parse failed" for e in logs), what="the forwarded lines")
        warning = next(e for e in logs if e["event"] == "row 7 is bad")
        assert warning["logger"] == "etl.rows" and warning["log_level"] == "warning"
        assert warning["worker_id"].startswith("local-") and isinstance(warning["task_id"], int)
        assert warning["call"] == "log_with_logging"
        error = next(e for e in logs if e["event"] == "parse failed")
        assert error["log_level"] == "error" and "KeyError: 'date'" in error["exception"]


async def test_one_task_id_and_the_callers_context_on_every_line_about_a_call(tmp_path: Path) -> None:
    import structlog

    from microkernel.services.execution_manager.errors import WorkerCrashedError
    from tests import tasks

    async with Kernel([], settings={"execution-manager": EM_LOCAL}) as kernel:
        em = kernel.get_service("execution-manager")
        with capture_logs() as logs, structlog.contextvars.bound_contextvars(request_id="r-42", user="ada"):
            handle = em.submit(tasks.log_with_logging, 3)
            assert await handle == 3
            await until(lambda: any(e["event"] == "parse failed" for e in logs), what="the forwarded lines")
            crashed = em.submit(tasks.crash)
            with pytest.raises(WorkerCrashedError, match=rf"\[task {crashed.task_id}\]"):
                await crashed
        worker_line = next(e for e in logs if e["event"] == "row 3 is bad")
        assert worker_line["task_id"] == handle.task_id and worker_line["attempt"] == 1
        assert worker_line["request_id"] == "r-42" and worker_line["user"] == "ada"  # the caller's, in the worker's line
        died = next(e for e in logs if e["event"] == "worker died")
        assert crashed.task_id in died["task_ids"]  # the crash line names the calls it took
        failed = next(e for e in logs if e["event"] == "call failed")
        assert failed["task_id"] == crashed.task_id and failed["request_id"] == "r-42"
        flaky = em.submit(tasks.flaky, str(tmp_path / "count"), 2, retries=2, retry_on=(ConnectionError,))
        assert await flaky == 3 and len(flaky.attempts) == 2
        assert [a.number for a in flaky.attempts] == [1, 2] and flaky.task_id == flaky.spec.task_id
        stats = await em.get_stats()
        assert stats.tasks_failed == 1  # calls: the crash; the flaky call succeeded in the end
        assert stats.attempts_failed == 3 and stats.tasks_retried == 2  # attempts, apart
        seen = em.submit(tasks.flaky_attempts, str(tmp_path / "again"), 1, retries=1, retry_on=(ConnectionError,))
        assert await seen == (seen.task_id, 2)  # the call sees which attempt it is, under one task id
