"""The job store on a real PostgreSQL server, shared by several kernels."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from kernel import Kernel
from kernel.errors import KernelError
from microkernel.services.jobs import AsyncClient, JobState
from microkernel.services.jobs.model import Job, JobRequest
from microkernel.services.jobs.pgstore import PostgresStore, shown
from microkernel.services.jobs.store import StoreError
from tests.conftest import EM_LOCAL
from tests.jobs.test_jobs import _drain

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


def _job(**fields: Any) -> Job:
    return Job.new(JobRequest.parse({"function": "m:f", **fields}))


def test_each_queued_job_is_taken_by_exactly_one_kernel(pg_url: str, tmp_path: Path) -> None:
    stores = [PostgresStore(pg_url, tmp_path / name) for name in ("a", "b", "c")]
    try:
        assert len({s.owner for s in stores}) == 3
        ids = {stores[0].add(_job(priority=i % 11))[0].id for i in range(300)}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:  # each with its own connection
            def take(store: PostgresStore) -> list[str]:
                taken: list[str] = []
                while batch := store.claim_queued(7):
                    taken += [j.id for j in batch]
                return taken
            results = list(pool.map(take, stores))
        assert sorted(id for r in results for id in r) == sorted(ids)  # all taken, none twice
        first = stores[0].add(_job())[0]
        assert stores[1].claim(first.id) and not stores[2].claim(first.id)
        assert [j.id for j in stores[1].unfinished()][-1] == first.id and first.id not in {
            j.id for j in stores[2].unfinished()}
    finally:
        for store in stores:
            store.close()


def test_priorities_first_and_a_key_once(pg_url: str, tmp_path: Path) -> None:
    store = PostgresStore(pg_url, tmp_path)
    try:
        low, high = store.add(_job(priority=1))[0], store.add(_job(priority=9))[0]
        assert [j.id for j in store.claim_queued(2)] == [high.id, low.id]
        keyed, new = store.add(_job(key="k1"))
        again, new_again = store.add(_job(key="k1"))
        assert new and not new_again and again.id == keyed.id
        assert [store.log(keyed.id, "info", "x" * 40, limit=100) for _ in range(4)] == [1, 2, 3, None]
        store.progressed(keyed.id, 0.3, "a third")
        assert (store.get(keyed.id).progress, store.get(keyed.id).message) == (0.3, "a third")  # type: ignore[union-attr]
        keyed.state, keyed.finished, keyed.result = JobState.SUCCEEDED, 1000.0, {"n": [1, 2]}
        store.finished(keyed)
        assert store.get(keyed.id).result == {"n": [1, 2]}  # type: ignore[union-attr]
        assert store.purge(before=1001.0) == 1 and store.get(keyed.id) is None and store.logs(keyed.id) == []
    finally:
        store.close()


def test_a_kernel_that_stops_beating_loses_its_jobs_to_the_others(pg_url: str, tmp_path: Path) -> None:
    dead, alive = PostgresStore(pg_url, tmp_path / "dead", orphan_after=0.2), PostgresStore(
        pg_url, tmp_path / "alive", orphan_after=0.2)
    try:
        dead.beat()
        queued, running, retryable = dead.add(_job())[0], dead.add(_job())[0], dead.add(_job(retries=1))[0]
        assert {j.id for j in dead.claim_queued(10)} == {queued.id, running.id, retryable.id}
        dead.started(running.id, 1, "local-1")
        dead.started(retryable.id, 1, "local-2")
        dead.beat()
        assert alive.beat() == []  # the dead one beat just now
        import time

        time.sleep(0.4)
        lost = alive.beat()
        assert [j.id for j in lost] == [running.id] and "not retryable" in (lost[0].error or "")
        assert {j.id for j in alive.claim_queued(10)} == {queued.id, retryable.id}
    finally:
        dead.close()
        alive.close()


async def test_two_kernels_share_one_queue_and_run_each_job_once(pg_url: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()

    def settings(name: str) -> dict[str, Any]:
        return {"execution-manager": {**EM_LOCAL, "minWorkers": 1, "maxWorkers": 1},
                "jobs": {"api": {"port": 0}, "dataDir": str(tmp_path / name), "store": pg_url, "pollInterval": 0.1}}

    async with Kernel([], settings=settings("a")) as a, Kernel([], settings=settings("b")):
        token = (tmp_path / "a" / "jobs.token").read_text().strip()
        async with AsyncClient(a.get_service("jobs").address, token=token) as client:
            jobs = [await client.submit(function="tests.tasks:touch_then_wait", args=[str(runs / f"{i}"), 0.05])
                    for i in range(30)]
            for job in jobs:
                await client.result(job.id, timeout=60)
            workers = {(await client.status(job.id)).worker for job in jobs}
        # Every job ran once, and the kernel nobody submitted to took its share.
        assert all((runs / f"{i}").read_text() == "ran\n" for i in range(30))
        import psycopg

        with psycopg.connect(pg_url) as db:
            owners = {row[0] for row in db.execute("SELECT owner FROM mk_jobs")}
        assert len(owners) == 2, owners
        assert workers  # each job names the worker that ran it


async def test_a_backlog_drains_as_jobs_end_not_poll_by_poll(pg_url: str, tmp_path: Path) -> None:
    """With every worker busy, jobs wait in the store; each job that ends takes the next at
    once. (The poll interval is a minute: a kernel that waited for it would take 30 min.)"""
    settings = {"execution-manager": {**EM_LOCAL, "minWorkers": 1, "maxWorkers": 1},
                "jobs": {"api": {"port": 0}, "dataDir": str(tmp_path), "store": pg_url, "pollInterval": 60}}
    async with Kernel([], settings=settings) as kernel:
        token = (tmp_path / "jobs.token").read_text().strip()
        async with AsyncClient(kernel.get_service("jobs").address, token=token) as client:
            jobs = [await client.submit(function="time:sleep", args=[0.02]) for _ in range(30)]
            assert len(kernel.get_service("jobs").runner) < 30  # most wait in the store, untaken
            async with asyncio.timeout(20):
                for job in jobs:
                    assert (await client.wait(job.id, 20)).state == JobState.SUCCEEDED


async def test_a_job_a_busy_kernel_leaves_is_taken_at_once_by_an_idle_one(pg_url: str, tmp_path: Path) -> None:
    """The busy kernel tells (NOTIFY); the idle one, listening, takes the job without
    waiting for its next poll (a minute away)."""
    def settings(name: str) -> dict[str, Any]:
        return {"execution-manager": {**EM_LOCAL, "minWorkers": 1, "maxWorkers": 1},
                "jobs": {"api": {"port": 0}, "dataDir": str(tmp_path / name), "store": pg_url, "pollInterval": 60}}

    async with Kernel([], settings=settings("busy")) as busy, Kernel([], settings=settings("idle")) as idle:
        token = (tmp_path / "busy" / "jobs.token").read_text().strip()
        async with AsyncClient(busy.get_service("jobs").address, token=token) as client:
            # The idle kernel's first look at the store is over (it listens from then on).
            await asyncio.sleep(0.5)
            held = [await client.submit(function="tests.tasks:slow", args=[15]) for _ in range(2)]  # runs, waits
            left = await client.submit(function="math:sqrt", args=[9])
            assert left.id not in busy.get_service("jobs").runner.running  # no room in the busy kernel
            async with asyncio.timeout(10):
                assert await client.result(left.id, timeout=10) == 3.0
            assert left.id not in busy.get_service("jobs").runner.running
            for job in held:
                await client.cancel(job.id)
        import psycopg

        with psycopg.connect(pg_url) as db:
            owner = db.execute("SELECT owner FROM mk_jobs WHERE id = %s", (left.id,)).fetchone()
        assert owner is not None and owner[0] == idle.get_service("jobs").store.owner


async def test_a_job_no_kernel_has_taken_yet_can_be_cancelled(pg_url: str, tmp_path: Path) -> None:
    settings = {"execution-manager": {**EM_LOCAL, "minWorkers": 1, "maxWorkers": 1},
                "jobs": {"api": {"port": 0}, "dataDir": str(tmp_path), "store": pg_url, "pollInterval": 0.1}}
    async with Kernel([], settings=settings) as kernel:
        token = (tmp_path / "jobs.token").read_text().strip()
        async with AsyncClient(kernel.get_service("jobs").address, token=token) as client:
            busy = [await client.submit(function="tests.tasks:slow", args=[2]) for _ in range(2)]  # one runs, one waits
            untaken = await client.submit(function="tests.tasks:touch", args=[str(tmp_path / "ran")])
            assert untaken.id not in kernel.get_service("jobs").runner.running  # no room here: no kernel has taken it
            await client.cancel(untaken.id)
            assert (await client.status(untaken.id)).state == JobState.CANCELLED
            for job in busy:
                await client.result(job.id, timeout=20)
        assert not (tmp_path / "ran").exists()


async def test_a_server_that_is_down_stops_start_up_and_names_it(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://kernel:secret@127.0.0.1:{port}/jobs"
    settings = {"execution-manager": EM_LOCAL, "jobs": {"api": {"port": 0}, "dataDir": str(tmp_path), "store": url}}
    with pytest.raises(KernelError, match=f"cannot open the job store at .*host=127.0.0.1 port={port}") as failed:
        async with Kernel([], settings=settings):
            pass
    assert "secret" not in str(failed.value)
    assert "secret" not in shown(url) and "kernel" in shown(url)
    with pytest.raises(StoreError):
        PostgresStore(url, tmp_path / "other")


async def test_a_dead_kernels_jobs_run_on_another(pg_url: str, tmp_path: Path) -> None:
    """SIGKILL one kernel of two: the other takes back what it held (orphanAfter)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    jobs_settings = {"api": {"port": port}, "dataDir": str(tmp_path / "doomed"), "store": pg_url,
                     "orphanAfter": 1.0, "pollInterval": 0.1}
    cmd = ["kernel", "run", str(tmp_path / "none"), "--no-http", "--set", "execution-manager.minWorkers=1",
           "--set", "execution-manager.maxWorkers=1"]
    for field, value in jobs_settings.items():
        cmd += ["--set", f"jobs.{field}={json.dumps(value)}"]
    (tmp_path / "none").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b"kernel running" not in (line := await proc.stderr.readline()):
                assert line, "the kernel did not start"
        drain = asyncio.get_running_loop().create_task(_drain(proc.stderr))
        token = (tmp_path / "doomed" / "jobs.token").read_text().strip()
        async with AsyncClient(f"http://127.0.0.1:{port}", token=token) as client:
            held = await client.submit(function="tests.tasks:touch_then_wait", args=[str(runs / "held"), 30])
            retry = await client.submit(function="tests.tasks:touch", args=[str(runs / "retry")], retries=1)
            for _ in range(100):
                if (runs / "held").exists():
                    break
                await asyncio.sleep(0.05)
        proc.kill()
        await proc.wait()
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    settings = {"execution-manager": {**EM_LOCAL, "minWorkers": 1, "maxWorkers": 1},
                "jobs": {"api": {"port": 0}, "dataDir": str(tmp_path / "heir"), "store": pg_url,
                         "orphanAfter": 1.0, "pollInterval": 0.1}}
    async with Kernel([], settings=settings) as heir:
        token = (tmp_path / "heir" / "jobs.token").read_text().strip()
        async with AsyncClient(heir.get_service("jobs").address, token=token) as client:
            lost = await client.wait(held.id, 20)
            assert lost.state == JobState.LOST and "stopped while the job ran" in (lost.error or "")
            assert await client.result(retry.id, timeout=20) == str(runs / "retry")
    assert (runs / "held").read_text() == "ran\n"
