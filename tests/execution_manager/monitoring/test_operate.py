"""Workers by id, as an operator acts on them: the Python API, the HTTP API and the
``kernel workers`` / ``kernel worker`` verbs against a real kernel with real workers,
one of them busy; the admin token made in the data folder on first start."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import CallRevokedError, WorkerConflictError
from tests import tasks
from tests.conftest import EM_LOCAL

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def kernel_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``kernel ARGS`` in another process (the data folder is the test's: the env)."""
    return subprocess.run([sys.executable, "-m", "kernel", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "160"})


async def until(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await check()):
        assert asyncio.get_running_loop().time() < deadline, f"waited {timeout:g} s for {what}"
        await asyncio.sleep(0.05)
    return value


def operated(**http: Any) -> Kernel:
    """A kernel with two local workers and its dashboard on a free port; no admin token
    given, so it makes one in the (test's) data folder."""
    http = {"port": 0, "adminTokenEnv": "MICROKERNEL_TEST_UNSET_TOKEN", **http}
    return Kernel([], settings={"execution-manager": {**EM_LOCAL, "http": http}})


async def test_an_operator_restarts_a_busy_worker_by_id_from_the_cli_and_nothing_is_lost() -> None:
    async with operated() as kernel, aiohttp.ClientSession() as http:
        em = kernel.get_service("execution-manager")
        url = em.http_address
        token = Path(os.environ["MICROKERNEL_DATA_DIR"]) / "admin.token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600  # made on first start, for the CLI to find

        long = em.submit(tasks.stamp, "long", 2.0)
        busy = await until(lambda: _busy(em), "a worker to run the long call")
        before = await em.worker(busy)
        assert before.calls[0].call == "stamp" and before.pid and before.restarts == 0

        listed = await asyncio.to_thread(kernel_cli, "workers", "--url", url, "--json")
        assert listed.returncode == 0, listed.stderr
        assert {w["id"] for w in json.loads(listed.stdout)} == {"local-1", "local-2"}
        shown = await asyncio.to_thread(kernel_cli, "worker", busy, "--url", url)
        assert shown.returncode == 0 and busy in shown.stdout and "stamp [task" in shown.stdout, shown.stdout

        restarted = await asyncio.to_thread(kernel_cli, "worker", busy, "--restart", "--url", url)
        assert restarted.returncode == 0, restarted.stderr
        assert f"worker {busy}: restart requested" in restarted.stdout
        # A second restart while the first drains is answered, not raced.
        async with http.post(f"{url}/api/workers/{busy}/restart",
                             headers={"Authorization": f"Bearer {token.read_text().strip()}"}) as r:
            assert r.status == 409 and "is leaving already" in (await r.json())["error"]
        with pytest.raises(WorkerConflictError, match="is leaving already"):
            await em.restart_worker(busy)
        more = [em.submit(tasks.inc, i) for i in range(50)]  # served meanwhile by the other worker

        assert (await long)[0] == "long"  # drained: the call it ran finished
        assert await asyncio.gather(*more) == list(range(1, 51))

        async def back() -> Any:
            w = next((w for w in await em.workers() if w.id == busy), None)
            return w if w is not None and w.state == "available" else None

        after = await until(back, f"{busy} to come back")
        assert after.pid != before.pid and after.restarts == 1  # a new process under the same id
        async with http.get(f"{url}/api/workers/{busy}") as r:
            assert r.status == 200 and (await r.json())["restarts"] == 1
        assert await asyncio.gather(*(em.submit(tasks.whoami) for _ in range(20)))  # the pool serves on
        assert {w.id for w in await em.workers()} == {"local-1", "local-2"}


async def test_unknown_workers_and_refused_actions_are_named() -> None:
    async with operated() as kernel, aiohttp.ClientSession() as http:
        em = kernel.get_service("execution-manager")
        url = em.http_address
        with pytest.raises(LookupError, match=r"no worker 'local-9' \(workers: local-1, local-2\)"):
            await em.worker("local-9")
        with pytest.raises(LookupError, match="no worker 'local-9'"):
            await em.restart_worker("local-9")
        async with http.get(f"{url}/api/workers/local-9") as r:
            assert r.status == 404 and "no worker 'local-9' (workers: local-1, local-2)" in (await r.json())["error"]
        async with http.post(f"{url}/api/workers/local-1/restart") as r:
            assert r.status == 401  # no token: nothing happens
        missing = await asyncio.to_thread(kernel_cli, "worker", "local-9", "--url", url)
        assert missing.returncode == 2 and "no worker 'local-9'" in missing.stderr, missing.stderr
        refused = await asyncio.to_thread(kernel_cli, "worker", "local-9", "--restart", "--url", url)
        assert refused.returncode == 2 and "404" in refused.stderr and "no worker 'local-9'" in refused.stderr
        assert {w.id for w in await em.workers()} == {"local-1", "local-2"}
        assert all(w.restarts == 0 for w in await em.workers())


async def test_with_control_off_the_api_is_read_only() -> None:
    async with operated(control=False) as kernel, aiohttp.ClientSession() as http:
        url = kernel.get_service("execution-manager").http_address
        async with http.post(f"{url}/api/workers/local-1/restart", headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 403 and "control is off" in (await r.json())["error"]
        async with http.get(f"{url}/api/workers/local-1") as r:
            assert r.status == 200 and (await r.json())["id"] == "local-1"


async def _busy(em: Any) -> str | None:
    return next((w.id for w in await em.workers() if w.calls), None)


async def test_revoking_calls_by_task_id_under_load(tmp_path: Path) -> None:
    """One worker busy, calls queued behind it: a revoked queued call never runs, the
    revoked running one is stopped (its worker replaced) and never retried, the rest run."""
    http_settings = {"port": 0, "adminTokenEnv": "MICROKERNEL_TEST_UNSET_TOKEN"}
    em_settings = {**EM_LOCAL, "minWorkers": 1, "maxWorkers": 1, "http": http_settings}
    async with Kernel([], settings={"execution-manager": em_settings}) as kernel:
        em = kernel.get_service("execution-manager")
        url = em.http_address
        ran = tmp_path / "ran"
        running = em.submit(tasks.touch_then_wait, str(ran), 30.0, retries=3)
        queued = [em.submit(tasks.touch_after, str(tmp_path / f"q{i}"), 0.0) for i in range(5)]
        await until(lambda: _running(em, running.task_id), "the long call to start")
        pid = (await em.worker("local-1")).pid

        assert em.revoke(queued[2].task_id) == "queued"
        cli = await asyncio.to_thread(kernel_cli, "revoke", str(running.task_id), "--url", url)
        assert cli.returncode == 0 and f"task {running.task_id}: revoked (it was running)" in cli.stdout, cli.stderr
        with pytest.raises(CallRevokedError, match=rf"\[task {running.task_id}\] was revoked and stopped"):
            await running
        with pytest.raises(CallRevokedError, match="was revoked before it ran"):
            await queued[2]
        done = await asyncio.gather(*(q for i, q in enumerate(queued) if i != 2))
        assert len(done) == 4 and not (tmp_path / "q2").exists()  # never ran
        assert ran.read_text() == "ran\n"  # stopped once, never retried (retries=3)
        assert pid not in {w.pid for w in await em.workers()}  # its worker was replaced
        for task_id in (running.task_id, 99999):
            with pytest.raises(LookupError, match=f"no call with task id {task_id} is waiting or running"):
                em.revoke(task_id)
        again = await asyncio.to_thread(kernel_cli, "revoke", "99999", "--url", url)
        assert again.returncode == 2 and "no call with task id 99999" in again.stderr, again.stderr
        stats = await em.get_stats()
        assert stats.queued_tasks == 0 and stats.active_tasks == 0


async def _running(em: Any, task_id: int) -> bool:
    return any(c.task_id == task_id for w in await em.workers() for c in w.calls)
