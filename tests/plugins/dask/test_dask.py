"""The dask transport on a real Dask LocalCluster (worker processes): the unchanged
executor conformance suite, calls through the execution manager, a Dask worker killed
mid-call, an unreachable scheduler, settings and versions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

pytest.importorskip("distributed", reason="the dask extra is not installed (pip install '.[dask]')")

from kernel import Kernel
from kernel.errors import ConfigError, PluginError, ServiceStartError, SettingsError
from microkernel.plugins.dask.listener import DaskCluster
from microkernel.plugins.dask.settings import DaskSettings, LocalClusterSettings
from microkernel.plugins.dask.versions import check_version
from microkernel.services.execution_manager.errors import WorkerCrashedError
from microkernel.services.execution_manager.executors import Worker
from microkernel.services.execution_manager.executors.testing import CHECKS, DEATH_CHECKS
from tests import tasks

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture(scope="module", autouse=True)
def resource_tracker() -> None:
    """Dask spawns its worker processes, which starts multiprocessing's resource
    tracker: one per process for good. Start it before the per-test process check."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


class Adopter:
    """Where the cluster's executors go when no pool is involved."""

    def __init__(self) -> None:
        self.adopted: list[Worker] = []

    def adopt(self, executor: Worker) -> None:
        self.adopted.append(executor)

    async def retire(self, worker_id: str, reason: str = "retired") -> None:
        pass


@pytest.fixture
async def cluster() -> AsyncIterator[DaskCluster]:
    c = DaskCluster(DaskSettings(local=LocalClusterSettings(workers=1, threads_per_worker=1)))
    await c.start(Adopter())
    try:
        yield c
    finally:
        await c.stop()


@pytest.mark.parametrize("check", CHECKS + DEATH_CHECKS, ids=lambda c: c.__name__)
async def test_conformance(cluster: DaskCluster, check: Any) -> None:
    await check(cluster.slot_executor)


@pytest.mark.parametrize("check", DEATH_CHECKS, ids=lambda c: c.__name__)
async def test_conformance_a_multi_threaded_worker_lost_with_several_calls_running(check: Any) -> None:
    c = DaskCluster(DaskSettings(local=LocalClusterSettings(workers=1, threads_per_worker=4)))
    await c.start(Adopter())
    try:
        await check(c.slot_executor)
    finally:
        await c.stop()


def scheduler_cmd(port: int) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
            "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]


def worker_cmd(address: str) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
            "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def started(marker: str) -> int:
    """Wait for ``tasks.announce_then_wait`` to run; the pid of the process running it."""
    deadline = time.monotonic() + 20
    while not await asyncio.to_thread(os.path.exists, marker):
        assert time.monotonic() < deadline, "the call never started"
        await asyncio.sleep(0.05)
    return int(await asyncio.to_thread(Path(marker).read_text))


def dask_kernel(**nodes: Any) -> Kernel:
    em = {"minWorkers": 0, "maxWorkers": 0, "inProcess": False,
          "nodes": {"transport": "dask", "local": {"workers": 2}, **nodes}}
    return Kernel([], settings={"execution-manager": em})


async def test_submit_map_and_errors_run_on_dask_workers() -> None:
    async with dask_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        stats = await em.get_stats()
        assert {w.node_type for w in stats.worker_details} == {"dask"} and len(stats.worker_details) == 2
        assert len(stats.nodes) == 2 and all(n.address.startswith("tcp://127.0.0.1:") for n in stats.nodes)
        pids = set(await asyncio.gather(*(em.submit(tasks.slow, 0.3, None) for _ in range(4))))
        assert pids == {None}
        worker_pids = {await em.submit(tasks.whoami) for _ in range(8)}
        assert os.getpid() not in worker_pids and 1 <= len(worker_pids) <= 2
        assert [r async for r in em.map(tasks.inc, range(300))] == list(range(1, 301))
        with pytest.raises(tasks.CustomError, match="dask says no") as err:
            await em.submit(tasks.raise_custom, "dask says no")
        assert "raise_custom" in err.value.remote_traceback
        handle = em.submit(tasks.report_then_wait, 0.5, 0.3)
        updates = [u async for u in handle.progress_updates()]
        assert await handle == 0.5 and [u.fraction for u in updates] == [0.5]
        with capture_logs() as logs:
            assert await em.submit(tasks.log_with_logging, 3) == 3
            deadline = time.monotonic() + 10
            while not any(e["event"] == "row 3 is bad" for e in logs):
                assert time.monotonic() < deadline, "the Dask worker's log line never arrived"
                await asyncio.sleep(0.05)
        line = next(e for e in logs if e["event"] == "row 3 is bad")
        assert line["worker_id"].startswith("dask-") and line["logger"] == "etl.rows"


async def test_results_are_fetched_and_let_go_of_in_bulk_and_none_stay_in_the_cluster() -> None:
    """Finished calls' results are gathered many at a time (collect.Results), held on
    the Dask workers a moment (SpentFutures), then all released."""
    async with dask_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        scheduler = em.listener.cluster.scheduler
        spent, client = em.listener._results.spent, em.listener.client
        spent.LINGER = 3.0  # long enough that a slow machine still sees them all held
        gathers = []
        gather = client.gather
        client.gather = lambda futures, *a, **kw: gathers.append(len(futures)) or gather(futures, *a, **kw)
        assert await asyncio.gather(*(em.submit(tasks.inc, i) for i in range(40))) == list(range(1, 41))
        assert sum(gathers) == 40 and len(gathers) < 40, gathers  # fetched many at a time (collect.Results)
        del client.gather
        assert len(spent) == 40 and len(scheduler.tasks) >= 40  # held together, not one by one
        deadline = time.monotonic() + 10
        while scheduler.tasks or em.listener.client.futures:
            assert time.monotonic() < deadline, f"{len(scheduler.tasks)} finished tasks never released"
            await asyncio.sleep(0.05)
        assert len(spent) == 0
        # results past MAX_BYTES are let go of at once, not after LINGER
        spent.MAX_BYTES = 1 << 20
        assert len(await em.submit(tasks.slow, 0.0, b"x" * (1 << 20))) == 1 << 20
        assert len(spent) == 0


async def test_a_multi_threaded_dask_worker_runs_a_call_per_thread_once_the_pool_knows_the_calls() -> None:
    async with dask_kernel(local={"workers": 1, "threadsPerWorker": 4}) as kernel:
        em = kernel.get_service("execution-manager")
        for _ in range(2):  # the second round runs with the limit learnt from the first
            spans = await asyncio.gather(*(em.submit(tasks.stamp, str(i), 0.4) for i in range(8)))
            most = max(sum(1 for _, start, end in spans if start <= t < end) for _, t, _ in spans)
            assert most == 4, spans  # 4 threads busy at once, never 2 (the limit of one thread)


async def test_a_dask_worker_killed_mid_call_gives_our_crash_error_or_retry(tmp_path: Any) -> None:
    async with dask_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        marker = str(tmp_path / "running")
        doomed = em.submit(tasks.announce_then_wait, marker, 30)
        os.kill(await started(marker), 9)
        with pytest.raises(WorkerCrashedError) as err:
            await asyncio.wait_for(doomed, 30)
        assert "Dask worker tcp://" in str(err.value) and "announce_then_wait" in str(err.value)
        counter = str(tmp_path / "flaky")
        assert await asyncio.wait_for(em.submit(tasks.crash_unless_marker, counter, retries=2), 60) == "survived"


async def test_cancelling_the_caller_cancels_the_dask_future_and_instances_pin_to_a_dask_worker(
        tmp_path: Path) -> None:
    async with dask_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        listener = em.listener
        marker = str(tmp_path / "running")
        handle = em.submit(tasks.announce_then_wait, marker, 3)
        await started(marker)
        deadline = time.monotonic() + 20
        [key] = [f.key for ex in listener.workers.values() for f in ex._sent.values()]
        handle.cancel()

        def on_scheduler(dask_scheduler: Any, key: str = key) -> bool:
            return key in dask_scheduler.tasks

        while await listener.client.run_on_scheduler(on_scheduler):
            assert time.monotonic() < deadline, "the Dask task was never cancelled"
            await asyncio.sleep(0.05)



async def test_an_assigned_instance_lives_on_a_dask_worker_and_comes_back(tmp_path: Path) -> None:
    from tests.conftest import write_service
    from tests.execution_manager.test_distributed import COUNTER

    write_service(tmp_path, "counter", {"global": True}, COUNTER)
    em_settings = {"minWorkers": 0, "maxWorkers": 0, "inProcess": False,
                   "nodes": {"transport": "dask", "local": {"workers": 2}}}
    async with Kernel([tmp_path], settings={"execution-manager": em_settings}) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        svc.n = 100
        wid = await em.assign_optimal_worker(svc)
        assert wid.startswith("dask-") and em.worker_of(svc) == wid
        results = await asyncio.gather(*(svc.incr(1) for _ in range(30)))
        assert results == list(range(101, 131))  # in call order, on one copy
        assert await svc.incr_async(10) == 140
        assert svc.n == 100
        await em.release_worker(svc)
        assert svc.n == 140 and len(svc.log) == 31 and em.worker_of(svc) is None


async def test_a_per_call_timeout_stops_the_call_as_on_a_local_worker() -> None:
    from microkernel.services.execution_manager.errors import CallTimeoutError

    async with dask_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        t0 = time.monotonic()
        with pytest.raises(CallTimeoutError, match=r"did not finish within 0\.5 s"):
            await em.submit(tasks.slow, 3.0, timeout=0.5)
        assert time.monotonic() - t0 < 2.5
        assert await asyncio.wait_for(em.submit(tasks.inc, 1), 10) == 2


async def test_an_unreachable_scheduler_is_named_the_kernel_keeps_its_workers_and_attaches_later() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    kernel = Kernel([], settings={"execution-manager": {
        "minWorkers": 1, "maxWorkers": 1, "inProcess": False,
        "nodes": {"transport": "dask", "scheduler": address, "connectTimeout": 1, "pollInterval": 0.2}}})
    t0 = time.monotonic()
    with capture_logs() as logs:
        async with kernel:
            assert time.monotonic() - t0 < 10
            [error] = [e for e in logs if e["event"].startswith("cannot reach the Dask scheduler")]
            assert error["scheduler"] == address and error["setting"] == "custom.nodes.scheduler"
            assert f"cannot reach the Dask scheduler at {address} within 1 s" in error["error"]
            em = kernel.get_service("execution-manager")
            assert f"cannot reach the Dask scheduler at {address}" in (await em.get_stats()).nodes_problem
            assert await em.submit(tasks.inc, 1) == 2  # the local worker serves meanwhile
            procs = [spawn(scheduler_cmd(port)), spawn(worker_cmd(address))]
            try:
                deadline = time.monotonic() + 30
                while not any(w.node_type == "dask" for w in (await em.get_stats()).worker_details):
                    assert time.monotonic() < deadline, "the Dask worker was never adopted"
                    await asyncio.sleep(0.1)
                assert (await em.get_stats()).nodes_problem is None
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()


@pytest.mark.parametrize(("nodes", "message"), [
    ({}, "give exactly one of scheduler"),
    ({"scheduler": "http://x:1"}, "must start with tcp:// or tls://"),
    ({"local": {"workers": 0}}, "execution-manager.nodes.local.workers"),
    ({"local": {"workers": 3, "maxWorkers": 2}}, "workers (3) is above maxWorkers (2)"),
    ({"scheduler": "tcp://x:1", "colour": 1}, "execution-manager.nodes.colour"),
])
async def test_bad_settings_name_the_field(nodes: dict[str, Any], message: str) -> None:
    kernel = Kernel([], settings={"execution-manager": {"nodes": {"transport": "dask", **nodes}}})
    with pytest.raises((ConfigError, ServiceStartError, SettingsError)) as err:
        async with kernel:
            pass
    assert message in str(err.value)


def test_unsupported_versions_are_named() -> None:
    with pytest.raises(PluginError, match=r"Dask 2023.1.0 is not supported: .* distributed 2024.4 up to"):
        check_version("2023.1.0")
    assert check_version("2026.8.0") == "2026.8.0"


async def test_an_existing_scheduler_by_address_and_unpicklable_arguments() -> None:
    import threading

    from distributed import LocalCluster

    from microkernel.services.execution_manager.errors import SerializationError

    async with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, asynchronous=True,
                            dashboard_address="127.0.0.1:0") as existing:
        em_settings = {"minWorkers": 0, "maxWorkers": 0, "inProcess": False,
                       "nodes": {"transport": "dask", "scheduler": existing.scheduler_address}}
        async with Kernel([], settings={"execution-manager": em_settings}) as kernel:
            em = kernel.get_service("execution-manager")
            [worker] = (await em.get_stats()).worker_details
            assert worker.node_type == "dask" and worker.address in existing.scheduler_info["workers"]
            [node] = (await em.get_stats()).nodes
            assert node.slots == 2
            assert await em.submit(tasks.inc, 1) == 2
            with pytest.raises(SerializationError, match="argument 0"):
                em.submit(tasks.inc, threading.Lock())
        assert len(existing.workers) == 1  # the kernel leaves a cluster it did not start running


async def test_without_dask_installed_the_kernel_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    with pytest.raises(PluginError, match=r"pip install 'microkernel-em\[dask\]'"):
        check_version()
    async with Kernel([], settings={"execution-manager": {"minWorkers": 1, "maxWorkers": 1}}) as kernel:
        assert await kernel.get_service("execution-manager").submit(tasks.inc, 1) == 2  # others unaffected
    kernel = Kernel([], settings={"execution-manager": {"nodes": {"transport": "dask", "local": {}}}})
    with pytest.raises(ServiceStartError, match=r"microkernel-em\[dask\]"):
        async with kernel:
            pass


async def test_the_scheduler_going_away_fails_calls_and_the_plugin_reconnects_when_it_returns() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str]) -> subprocess.Popen[bytes]:
        procs.append(spawn(cmd))
        return procs[-1]

    async def workers(em: Any) -> list[str]:
        return [w.id for w in (await em.get_stats()).worker_details]

    async def until_workers(em: Any, other_than: tuple[str, ...] = ()) -> list[str]:
        deadline = time.monotonic() + 30
        while not (found := [w for w in await workers(em) if w not in other_than]):
            assert time.monotonic() < deadline, "no Dask worker joined"
            await asyncio.sleep(0.1)
        return found

    scheduler = start(scheduler_cmd(port))
    start(worker_cmd(address))
    try:
        em_settings = {"minWorkers": 0, "maxWorkers": 0, "inProcess": False,
                       "nodes": {"transport": "dask", "scheduler": address, "connectTimeout": 20}}
        async with Kernel([], settings={"execution-manager": em_settings}) as kernel:
            em = kernel.get_service("execution-manager")
            [first] = await until_workers(em)
            assert first.startswith("dask-127.0.0.1-") and first.endswith(".1")
            assert await em.submit(tasks.inc, 1) == 2
            running = em.submit(tasks.slow, 10)
            await asyncio.sleep(1.0)
            scheduler.kill()
            scheduler.wait()
            with pytest.raises(WorkerCrashedError, match=r"Dask worker tcp://127\.0\.0\.1"):
                await asyncio.wait_for(running, 20)
            for proc in procs[1:]:  # as a deployment would: workers come back with their scheduler
                proc.kill()
                proc.wait()
            start(scheduler_cmd(port))
            start(worker_cmd(address))
            [again] = await until_workers(em, other_than=(first,))
            assert await workers(em) == [again]  # the lost one is gone
            assert await asyncio.wait_for(em.submit(tasks.inc, 41), 20) == 42
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_the_kernels_autoscaler_grows_and_shrinks_a_local_dask_cluster() -> None:
    nodes = {"transport": "dask", "pollInterval": 0.2,
             "local": {"workers": 1, "minWorkers": 1, "maxWorkers": 2, "idleTimeout": 1.0}}
    async with dask_kernel(**nodes) as kernel:
        em = kernel.get_service("execution-manager")
        seen: set[int] = set()

        async def count() -> int:
            n = len((await em.get_stats()).worker_details)
            seen.add(n)
            return n

        assert await count() == 1
        handles = [em.submit(tasks.slow, 1.0, i) for i in range(8)]
        deadline = time.monotonic() + 30
        while await count() < 2:
            assert time.monotonic() < deadline, "the cluster never grew"
            await asyncio.sleep(0.1)
        assert await asyncio.gather(*handles) == list(range(8))
        while await count() > 1:
            assert time.monotonic() < deadline + 20, "the cluster never shrank"
            await asyncio.sleep(0.1)
        assert max(seen) == 2  # never above maxWorkers
        assert "idle" in em.listener.last_decision
        assert await em.submit(tasks.inc, 1) == 2


async def test_a_tls_scheduler_with_dasks_security_settings_passed_through(tmp_path: Path) -> None:
    import trustme
    from distributed import LocalCluster, Security

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "cert.pem"))
    ca_file, cert = str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem")
    security = Security(tls_ca_file=ca_file, tls_scheduler_cert=cert, tls_worker_cert=cert, tls_client_cert=cert,
                        require_encryption=True)
    async with LocalCluster(n_workers=1, threads_per_worker=1, protocol="tls", security=security, host="127.0.0.1",
                            asynchronous=True, dashboard_address="127.0.0.1:0") as existing:
        address = existing.scheduler_address
        assert address.startswith("tls://")
        nodes = {"transport": "dask", "scheduler": address, "connectTimeout": 5,
                 "security": {"tlsCaFile": ca_file, "tlsClientCert": cert, "requireEncryption": True}}
        em_settings = {"minWorkers": 0, "maxWorkers": 0, "inProcess": False, "nodes": nodes}
        async with Kernel([], settings={"execution-manager": em_settings}) as kernel:
            em = kernel.get_service("execution-manager")
            assert await em.submit(tasks.inc, 1) == 2
            [worker] = (await em.get_stats()).worker_details
            assert worker.address.startswith("tls://")


async def test_a_drained_dask_worker_stays_out_of_the_pool_and_one_is_never_restarted_by_the_kernel() -> None:
    from microkernel.services.execution_manager.errors import WorkerConflictError

    async with dask_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        first, second = sorted(w.id for w in (await em.get_stats()).worker_details)
        with pytest.raises(WorkerConflictError, match=f"worker {first} cannot be restarted: it is a dask worker"):
            await em.restart_worker(first)
        await em.drain_worker(first)
        await asyncio.sleep(1.0)  # a few looks at the cluster: it must not be adopted again
        stats = await em.get_stats()
        assert [w.id for w in stats.worker_details] == [second]
        assert {n.id: n.state for n in stats.nodes} == {first: "out of the pool", second: "available"}
        assert await em.submit(tasks.inc, 1) == 2
