"""Jobs from outside the kernel: the API, the clients, the store, task types, bad input.

Every test runs a real kernel (its job API on a free port, real worker processes) and
talks to it over HTTP, as a user's other process would."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import jsonschema
import psutil
import pytest

from kernel import Kernel
from kernel.errors import KernelError
from microkernel.services.jobs import AsyncClient, Client, JobFailed, JobNotFound, JobRejected, JobState
from microkernel.services.jobs.client import AuthError, ClientError
from microkernel.services.jobs.model import Job, JobRequest
from microkernel.services.jobs.settings import ApiSettings, JobError
from microkernel.services.jobs.store import SqliteStore, StoreError
from tests import tasks
from tests.conftest import EM_LOCAL, throwaway_tls
from tests.nodes import process_gone, until

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "services" / "examples"


@contextlib.asynccontextmanager
async def jobs_kernel(data: Path, paths: tuple[Path, ...] = (), em: dict[str, Any] | None = None,
                      **custom: Any) -> AsyncIterator[tuple[Kernel, AsyncClient, str]]:
    settings = {"execution-manager": {**EM_LOCAL, **(em or {})},
                "jobs": {"api": {"port": 0}, "dataDir": str(data), **custom}}
    async with Kernel(list(paths), settings=settings) as kernel:
        jobs = kernel.get_service("jobs")
        token = (data / "jobs.token").read_text().strip()
        async with AsyncClient(jobs.address, token=token) as client:
            yield kernel, client, token


# -- through the API, as a user would ------------------------------------------------


async def test_a_service_method_and_a_function_run_as_jobs_and_keep_their_results(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path, (EXAMPLES,)) as (kernel, client, token):
        job = await client.submit(service="prime-counter", method="count_range", args=[0, 1000])
        assert job.state in (JobState.QUEUED, JobState.RUNNING) and len(job.id) == 32  # placed at once if it can
        assert job.name == "prime-counter.count_range"  # given no name: what it runs
        assert await client.result(job.id, timeout=30) == 168
        done = await client.status(job.id)
        assert done.state == JobState.SUCCEEDED and done.attempts == 1 and done.worker.startswith("local-")
        assert done.started is not None and done.finished is not None and done.finished >= done.started

        # The blocking client, from another thread (the kernel runs on this loop).
        address = kernel.get_service("jobs").address

        def blocking() -> tuple[Any, list[str]]:
            with Client(address, token=token) as sync:
                ref = sync.submit({"function": "math:factorial", "args": [20]})
                return sync.result(ref.id, timeout=30), [j.id for j in sync.list(type="function")]

        value, listed = await anyio.to_thread.run_sync(blocking)
        assert value == 2432902008176640000 and len(listed) == 1
        assert {j.type for j in await client.list()} == {"service", "function"}
        assert [j.id for j in await client.list(state="succeeded", type="service")] == [job.id]


async def test_a_jobs_log_lines_are_kept_and_followed_as_they_are_written(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path) as (_kernel, client, _token):
        job = await client.submit(function="tests.tasks:log_lines", args=[5, 0.1])
        seen = [line.line async for line in client.logs(job.id, follow=True)]
        assert seen == [f"line {i}" for i in range(5)]
        assert (await client.status(job.id)).state == JobState.SUCCEEDED  # follow ends when the job does
        later = [line.seq async for line in client.logs(job.id, after=3)]
        assert later == [4, 5]


async def test_cancelling_a_queued_job_means_it_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    async with jobs_kernel(tmp_path, em={"minWorkers": 1, "maxWorkers": 1}) as (_kernel, client, _token):
        busy = await client.submit(function="tests.tasks:slow", args=[1.0])
        queued = await client.submit(function="tests.tasks:touch", args=[str(marker)])
        cancelled = await client.cancel(queued.id)
        assert cancelled.id == queued.id
        assert (await client.wait(queued.id, 10)).state == JobState.CANCELLED
        await client.result(busy.id, timeout=10)
        await asyncio.sleep(0.3)
        assert not marker.exists()
        with pytest.raises(JobRejected, match="already finished") as finished:
            await client.cancel(queued.id)
        assert finished.value.status == 409
        with pytest.raises(JobFailed, match="cancelled"):
            await client.result(queued.id)


async def test_jobs_go_through_the_scheduler_higher_priority_first(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path, em={"minWorkers": 1, "maxWorkers": 1}) as (_kernel, client, _token):
        busy = await client.submit(function="tests.tasks:slow", args=[0.5])
        low = [await client.submit(function="tests.tasks:stamp", args=[f"low{i}"], priority=1) for i in range(3)]
        high = [await client.submit(function="tests.tasks:stamp", args=[f"high{i}"], priority=9) for i in range(3)]
        await client.result(busy.id, timeout=10)
        starts = {}
        for job in low + high:
            tag, started, _ = await client.result(job.id, timeout=10)
            starts[tag] = started
        order = sorted(starts, key=starts.__getitem__)
        assert order == ["high0", "high1", "high2", "low0", "low1", "low2"], order


async def test_an_idempotency_key_returns_the_same_job(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    async with jobs_kernel(tmp_path) as (_kernel, client, _token):
        first = await client.submit(function="tests.tasks:touch", args=[str(marker)], key="nightly-2026-12-07")
        again = await client.submit(function="tests.tasks:touch", args=[str(marker)], key="nightly-2026-12-07")
        assert again.id == first.id
        await client.result(first.id, timeout=10)
        assert marker.read_text() == "ran\n"  # once
        # The same key for another request is a mistake, not the same job: 409 naming the key.
        with pytest.raises(JobRejected, match=rf"the idempotency key 'nightly-2026-12-07' was used for another "
                                              rf"request \(job {first.id}\)") as other:
            await client.submit(function="tests.tasks:touch", args=[str(marker) + "x"], key="nightly-2026-12-07")
        assert other.value.status == 409
        assert first.name == "tests.tasks:touch"  # a job given no name is listed by what it runs


async def test_results_that_the_store_cannot_keep_fail_the_job_and_say_why(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path, maxResultBytes=1000) as (_kernel, client, _token):
        big = await client.submit(function="tests.tasks:sized", args=[5000])
        with pytest.raises(JobFailed, match=r"5,002 bytes of JSON, over the store's limit of 1,000 "
                                            r"\(custom.maxResultBytes"):
            await client.result(big.id, timeout=10)
        odd = await client.submit(function="tests.tasks:a_set")
        with pytest.raises(JobFailed, match="not JSON"):
            await client.result(odd.id, timeout=10)
        raised = await client.submit(function="tests.tasks:raise_custom", args=["boom"])
        with pytest.raises(JobFailed, match="CustomError: boom") as failed:
            await client.result(raised.id, timeout=10)
        assert failed.value.job.state == JobState.FAILED


async def test_bad_requests_get_a_4xx_that_names_the_field_and_keep_nothing(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path, (EXAMPLES,)) as (kernel, client, token):
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"type": "teleport"}, "type", "unknown task type 'teleport'"),
            ({"args": [1]}, "type", "say the task type"),
            ({"function": "nosuch.module:f"}, "function", "no module 'nosuch.module'"),
            ({"function": "math"}, "function", "package.module:function"),
            ({"function": "math:sqrt", "args": {"x": 1}}, "args", "JSON array"),
            ({"function": "math:sqrt", "priority": 11}, "priority", "0-10"),
            ({"function": "math:sqrt", "timeout": 0}, "timeout", "above 0"),
            ({"function": "math:sqrt", "colour": "red"}, "colour", "no field 'colour'"),
            ({"service": "prime-counter", "method": "nope"}, "method", "no @distributed method 'nope'"),
            ({"service": "no-such-service", "method": "x"}, "service", "no service 'no-such-service'"),
            ({"command": ["ls"]}, "type", "shell jobs are off"),
            ({"code": "result = 1"}, "type", "code jobs are off"),
            ({"url": "ftp://example.com"}, "url", "http:// or https://"),
        ]
        for body, field, message in cases:
            with pytest.raises(JobRejected, match=message) as refused:
                await client.submit(body)
            assert refused.value.field == field, body
        assert await client.list() == []  # nothing half-written
        with pytest.raises(JobNotFound, match="no job 'f00'"):
            await client.status("f00")
        with pytest.raises(JobNotFound):
            await client.cancel("f00")
        address = kernel.get_service("jobs").address
        async with httpx.AsyncClient(base_url=address) as raw:
            auth = {"Authorization": f"Bearer {token}"}
            answer = await raw.post("/jobs", content=b"{not json", headers=auth)
            assert answer.status_code == 400 and "not JSON" in answer.json()["error"]
            answer = await raw.post("/jobs", content=b"[" + b"1," * 600_000 + b"1]", headers=auth)
            assert answer.status_code == 413 and "maxBody" in answer.json()["error"]
            assert (await raw.get("/jobs")).status_code == 401  # reads need the token too
            assert (await raw.get("/jobs", headers={"Authorization": "Bearer nope"})).status_code == 403
            answer = await raw.get("/jobs", params={"limit": "lots"}, headers=auth)
            assert answer.status_code == 400 and answer.json()["field"] == "limit"
        with pytest.raises(AuthError):
            async with AsyncClient(address, token="wrong") as wrong:
                await wrong.list()


async def test_shell_jobs_stream_their_output_and_fail_on_a_nonzero_exit(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path, allowShell=True) as (_kernel, client, _token):
        job = await client.submit(command=["sh", "-c", "echo one; echo two >&2; echo three"])
        assert await client.result(job.id, timeout=10) == {"exit_code": 0}
        lines = {(line.level, line.line) async for line in client.logs(job.id)}
        assert lines == {("info", "one"), ("warning", "two"), ("info", "three")}
        failing = await client.submit(command=["sh", "-c", "exit 3"])
        with pytest.raises(JobFailed, match="command exited with 3"):
            await client.result(failing.id, timeout=10)


async def test_a_timed_out_shell_job_leaves_nothing_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with jobs_kernel(tmp_path, allowShell=True) as (_kernel, client, _token):
        job = await client.submit(command=["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout=1)
        with pytest.raises(JobFailed, match=r"within 1 s|past its timeout"):  # the pool's or the command's
            await client.result(job.id, timeout=10)
        grandchild = int(pid_file.read_text())  # the shell's own child too, not only the shell
        await until(lambda: process_gone(grandchild), 5, f"the shell's sleep (pid {grandchild}) ended")


def test_a_command_past_its_own_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    from microkernel.services.jobs.work import WorkFailed as CommandFailed, run_command

    pid_file = tmp_path / "pid"
    with pytest.raises(CommandFailed, match=r"past its timeout of 0\.5 s"):
        run_command(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], False, None, None, 0.5)
    grandchild = psutil.Process(int(pid_file.read_text()))
    _gone, alive = psutil.wait_procs([grandchild], timeout=5)
    assert not alive


async def test_module_code_and_http_jobs_run_on_workers(tmp_path: Path) -> None:
    from aiohttp import web

    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(await request.text())
        return web.json_response({"ok": True}, status=201)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with jobs_kernel(tmp_path, allowCode=True) as (_kernel, client, _token):
            code = await client.submit(code="import os\nprint('from', 'code')\nresult = os.getpid()")
            pid = await client.result(code.id, timeout=10)
            assert pid != os.getpid()  # on a worker, never in the kernel's process
            assert [line.line async for line in client.logs(code.id)] == ["from code"]
            module = await client.submit(module="json.tool", argv=["--help"])
            await client.result(module.id, timeout=10)
            assert any("usage" in line for line in [line.line async for line in client.logs(module.id)])
            http = await client.submit(url=f"http://127.0.0.1:{port}/hook", method="POST", json={"n": 1})
            answer = await client.result(http.id, timeout=10)
            assert answer["status"] == 201 and json.loads(answer["body"]) == {"ok": True}
            assert hits == ['{"n": 1}']
            refused = await client.submit(url=f"http://127.0.0.1:{port}/nowhere", expect=[200])
            with pytest.raises(JobFailed, match="answered 404, expected 200"):
                await client.result(refused.id, timeout=10)
            broken = await client.submit(module="json.tool", argv=["/no/such/file"])
            with pytest.raises(JobFailed, match="exited with"):
                await client.result(broken.id, timeout=10)
    finally:
        await runner.cleanup()


async def test_a_jobs_progress_and_timeout_come_through(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path) as (kernel, client, _token):
        job = await client.submit(function="tests.tasks:report_then_wait", args=[0.5, 1.0])
        for _ in range(100):
            status = await client.status(job.id)
            if status.progress is not None:
                break
            await asyncio.sleep(0.05)
        assert status.progress == 0.5 and status.message == "halfway there" and status.state == JobState.RUNNING
        kept = kernel.get_service("jobs").store.get(job.id)  # written through: other kernels see it too
        assert (kept.progress, kept.message, kept.state) == (0.5, "halfway there", JobState.RUNNING)
        assert await client.result(job.id, timeout=10) == 0.5
        assert (await client.status(job.id)).progress == 0.5  # kept with the job
        late = await client.submit(function="tests.tasks:slow", args=[5], timeout=0.5)
        with pytest.raises(JobFailed, match=r"did not finish within 0\.5 s"):
            await client.result(late.id, timeout=10)


async def test_the_python_client_submits_callables_pickled(tmp_path: Path) -> None:
    scale = 3

    def scaled(x: int, *, plus: int = 0) -> int:  # a closure: pickled by value
        return x * scale + plus

    async with jobs_kernel(tmp_path) as (kernel, client, token):
        job = await client.submit(scaled, 14, plus=1, priority=7, name="scaled")
        assert job.type == "pickle" and job.priority == 7 and job.name == "scaled"
        assert await client.result(job.id, timeout=10) == 43
        address = kernel.get_service("jobs").address

        def blocking() -> Any:
            with Client(address, token=token) as sync:
                return sync.result(sync.submit(tasks.inc, 41).id, timeout=10)

        assert await anyio.to_thread.run_sync(blocking) == 42
        with pytest.raises(JobRejected, match="base64") as refused:
            await client.submit(type="pickle", payload="not base64!")
        assert refused.value.field == "payload"
        with pytest.raises(TypeError, match="go with a callable"):
            await client.submit({"function": "math:sqrt"}, 4)


async def test_a_retried_job_keeps_its_failed_attempts(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path) as (_kernel, client, _token):
        job = await client.submit(function="tests.tasks:crash_unless_marker", args=[str(tmp_path / "m")], retries=1)
        assert await client.result(job.id, timeout=20) == "survived"
        done = await client.status(job.id)
        assert done.attempts == 2 and len(done.failures) == 1
        first = done.failures[0]
        assert first["attempt"] == 1 and first["worker"].startswith("local-") and "WorkerCrashedError" in first["error"]


async def test_metrics_count_jobs_by_state_and_type(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path, em={"http": {"port": 0}}) as (kernel, client, _token):
        ok = await client.submit(function="math:factorial", args=[5])
        bad = await client.submit(function="math:sqrt", args=["x"])
        await client.wait(ok.id, 10)
        await client.wait(bad.id, 10)
        dashboard = kernel.get_service("execution-manager").http_address
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{dashboard}/metrics")).text
        assert 'microkernel_jobs{state="succeeded",type="function"} 1.0' in text
        assert 'microkernel_jobs{state="failed",type="function"} 1.0' in text


async def _cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec("kernel", *argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_cli_submits_follows_and_refuses_with_exit_code_2(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path) as (kernel, _client, _token):
        api = ["--api", kernel.get_service("jobs").address, "--token-file", str(tmp_path / "jobs.token")]
        code, out, err = await _cli("submit", *api, "--function", "math:factorial", "--arg", "10", "--wait")
        assert (code, out.strip()) == (0, "3628800"), err
        code, out, err = await _cli("submit", *api, "--function", "tests.tasks:log_lines", "--arg", "3",
                                    "--name", "three", "--json")
        assert code == 0, err
        job_id = json.loads(out)["id"]
        code, out, _ = await _cli("logs", job_id, *api, "--follow")
        assert (code, out.splitlines()) == (0, ["line 0", "line 1", "line 2"])
        code, out, _ = await _cli("job", job_id, *api, "--json")
        assert code == 0 and json.loads(out)["state"] == "succeeded" and json.loads(out)["result"] == 3
        code, out, _ = await _cli("jobs", *api, "--json", "--type", "function")
        assert code == 0 and {j["name"] for j in json.loads(out)} == {"math:factorial", "three"}  # unnamed: what it runs
        code, out, _ = await _cli("jobs", *api)
        assert code == 0 and job_id in out and "succeeded" in out
        for argv, message in [
            (("submit", *api, "--function", "nosuch.mod:f"), "no module 'nosuch.mod'"),
            (("submit", *api, "--function", "tests.tasks:no_such_function"),
             "module 'tests.tasks' has no 'no_such_function' at its top level"),
            (("submit", *api, "--function", "math:sqrt", "--arg", "{not json"), "--arg: '{not json' is not valid JSON"),
            (("submit", *api, "--shell"), "--shell runs the command after --"),
            (("job", "f00", *api), "no job 'f00'"),
            (("cancel", job_id, *api), "has already finished"),
            (("jobs", "--api", kernel.get_service("jobs").address, "--token-file", str(tmp_path / "nope")),
             f"Invalid value for '--token-file': File '{tmp_path / 'nope'}' does not exist."),
        ]:
            code, out, err = await _cli(*argv)
            assert code == 2 and message in err and "Traceback" not in err, (argv, err)
        bad_token = tmp_path / "bad"
        bad_token.write_text("wrong")
        code, _, err = await _cli("jobs", "--api", kernel.get_service("jobs").address, "--token-file", str(bad_token))
        assert code == 2 and "wrong token" in err


async def test_the_api_over_tls_with_a_certificate_the_client_trusts(tmp_path: Path) -> None:
    cert, key, _ = throwaway_tls(tmp_path)
    api = {"host": "127.0.0.1", "port": 0, "certFile": cert, "keyFile": key}
    settings = {"execution-manager": EM_LOCAL, "jobs": {"api": api, "dataDir": str(tmp_path)}}
    async with Kernel([], settings=settings) as kernel:
        address = kernel.get_service("jobs").address
        assert address.startswith("https://127.0.0.1:")
        token = (tmp_path / "jobs.token").read_text().strip()
        async with AsyncClient(address, token=token, ca_file=str(tmp_path / "ca.pem")) as client:
            job = await client.submit(function="math:factorial", args=[5])
            assert await client.result(job.id, timeout=10) == 120

        def blocking() -> Any:
            with Client(address, token=token, ca_file=str(tmp_path / "ca.pem")) as sync:
                return [j.id for j in sync.list()]

        assert await anyio.to_thread.run_sync(blocking) == [job.id]
        async with AsyncClient(address, token=token) as untrusting:  # the system's CAs: refused
            with pytest.raises(ClientError, match="cannot reach the job API"):
                await untrusting.list()


# -- durability: the kernel killed and started again ----------------------------------


def _kernel_process(data: Path, port: int) -> list[str]:
    return ["kernel", "run", str(EXAMPLES), "--no-http", "--set", f"jobs.api={json.dumps({'port': port})}",
            "--set", f"jobs.dataDir={json.dumps(str(data))}", "--set", "execution-manager.minWorkers=1",
            "--set", "execution-manager.maxWorkers=1"]


async def _start(data: Path, port: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(*_kernel_process(data, port), env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while b"kernel running" not in await proc.stderr.readline():
            pass
    asyncio.get_running_loop().create_task(_drain(proc.stderr))
    return proc


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def test_acknowledged_jobs_survive_sigkill_of_the_kernel(tmp_path: Path) -> None:
    data, runs = tmp_path / "data", tmp_path / "runs"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused_tcp_port = probe.getsockname()[1]
    runs.mkdir()
    proc = await _start(data, unused_tcp_port)
    try:
        token = (data / "jobs.token").read_text().strip()
        url = f"http://127.0.0.1:{unused_tcp_port}"
        async with AsyncClient(url, token=token) as client:
            # One worker: the first job runs, the others wait behind it.
            once = await client.submit(function="tests.tasks:touch_then_wait", args=[str(runs / "once"), 30])
            retry = await client.submit(function="tests.tasks:touch_then_wait", args=[str(runs / "retry"), 0.1],
                                        retries=1)
            queued = await client.submit(function="tests.tasks:touch", args=[str(runs / "queued")])
            for _ in range(100):
                if (runs / "once").exists():
                    break
                await asyncio.sleep(0.05)
            assert (await client.status(once.id)).state == JobState.RUNNING
        proc.kill()
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    proc = await _start(data, unused_tcp_port)
    try:
        async with AsyncClient(url, token=token) as client:
            assert await client.result(queued.id, timeout=30) == str(runs / "queued")
            await client.result(retry.id, timeout=30)
            lost = await client.wait(once.id, 10)
            assert lost.state == JobState.LOST and "not retryable" in (lost.error or "")
            logs = [line.line async for line in client.logs(queued.id)]
            assert logs == ["queued when the kernel stopped: run now"]
        assert (runs / "once").read_text() == "ran\n"  # never run twice
        assert (runs / "queued").read_text() == "ran\n"
    finally:
        proc.terminate()
        await proc.wait()


# -- the parts, without a kernel ------------------------------------------------------


def test_the_write_ahead_log_is_emptied_under_a_steady_stream_of_writes(tmp_path: Path) -> None:
    """A checkpoint that only ever caught up part of the way let the log grow without end
    (a gigabyte for 40,000 jobs); now it is emptied every second, writes or not."""
    store = SqliteStore(tmp_path)
    wal = tmp_path / "jobs.db-wal"
    sizes = []
    try:
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            for _ in range(50):
                job = store.add(Job.new(JobRequest.parse({"function": "math:sqrt", "args": [4]})))[0]
                store.started(job.id, 1, "local-1")
                job.state, job.result, job.finished = JobState.SUCCEEDED, 2.0, time.time()
                store.finished(job)
            sizes.append(wal.stat().st_size)
        assert any(later < earlier for earlier, later in itertools.pairwise(sizes)), "the log never shrank"
        time.sleep(2.5)
        assert wal.stat().st_size == 0
    finally:
        store.close()


def test_a_second_kernel_on_the_same_store_is_refused_by_name(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    try:
        with pytest.raises(StoreError, match=f"another kernel uses the data folder {tmp_path}"):
            SqliteStore(tmp_path)
    finally:
        store.close()
    readonly = tmp_path / "ro"
    readonly.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(StoreError, match=str(readonly)):
            SqliteStore(readonly / "data")


async def test_a_store_that_cannot_open_stops_start_up_with_its_name(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(KernelError, match=f"cannot open the job store in {blocker / 'data'}"):
        async with jobs_kernel(blocker / "data"):
            pass


def test_the_store_caps_each_log_and_forgets_old_jobs(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    try:
        job, new = store.add(Job.new(JobRequest.parse({"function": "m:f"})))
        assert new
        numbers = [store.log(job.id, "info", "x" * 40, limit=100) for _ in range(4)]
        assert numbers == [1, 2, 3, None]  # the third says the rest is dropped
        assert "later lines are dropped" in store.logs(job.id)[-1].line
        job.state, job.finished = JobState.SUCCEEDED, 1000.0
        store.finished(job)
        assert store.purge(before=999.0) == 0 and store.get(job.id) is not None
        assert store.purge(before=1001.0) == 1 and store.get(job.id) is None and store.logs(job.id) == []
    finally:
        store.close()


def test_listening_beyond_loopback_needs_tls_or_insecure() -> None:
    with pytest.raises(ValueError, match="not loopback: give certFile and keyFile"):
        ApiSettings(host="0.0.0.0")
    assert ApiSettings(host="0.0.0.0", insecure=True).insecure


@pytest.mark.parametrize(("body", "field"), [
    ([], None), ({"type": 3}, "type"), ({"type": "function", "retries": -1}, "retries"),
    ({"type": "function", "key": ""}, "key"), ({"type": "function", "project": ""}, "project"),
])
def test_requests_are_checked_field_by_field(body: Any, field: str | None) -> None:
    with pytest.raises(JobError) as refused:
        JobRequest.parse(body)
    assert refused.value.field == field


# -- the OpenAPI description ------------------------------------------------------------


class _Request:
    """An httpx request as openapi-core reads one."""

    def __init__(self, request: httpx.Request) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.host_url = f"{request.url.scheme}://{request.url.netloc.decode()}"
        self.path = request.url.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(query=ImmutableMultiDict(list(request.url.params.multi_items())),
                                            header=Headers(list(request.headers.items())),
                                            cookie=ImmutableMultiDict())


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "").split(";")[0]
        self.headers = dict(response.headers)
        self.data = response.content


async def test_the_server_answers_as_its_openapi_description_says(tmp_path: Path) -> None:
    from openapi_core import OpenAPI

    spec_path = REPO / "services" / "jobs" / "openapi.json"
    openapi = OpenAPI.from_file_path(str(spec_path))
    exchanges: list[httpx.Response] = []
    async with jobs_kernel(tmp_path, (EXAMPLES,)) as (kernel, _client, token):
        address = kernel.get_service("jobs").address
        async with httpx.AsyncClient(base_url=address, headers={"Authorization": f"Bearer {token}"}) as http:
            async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
                response = await http.request(method, path, **kwargs)
                exchanges.append(response)
                return response

            job = (await call("POST", "/jobs", json={"function": "tests.tasks:log_lines", "args": [2]})).json()
            keyed = await call("POST", "/jobs", json={"function": "math:sqrt", "key": "k", "args": [4]})
            assert keyed.status_code == 201
            assert (await call("POST", "/jobs", json={"function": "math:sqrt", "key": "k", "args": [4]})).status_code == 200
            assert (await call("POST", "/jobs", json={"type": "nope"})).status_code == 400
            assert (await call("GET", f"/jobs/{job['id']}/result", params={"wait": 10})).status_code == 200
            # both jobs finished before they are counted below
            assert (await call("GET", f"/jobs/{keyed.json()['id']}/result", params={"wait": 10})).status_code == 200
            slow = (await call("POST", "/jobs", json={"function": "tests.tasks:slow", "args": [5]})).json()
            assert (await call("GET", f"/jobs/{slow['id']}/result")).status_code == 202
            assert (await call("POST", f"/jobs/{slow['id']}/cancel")).status_code == 202
            assert (await call("POST", f"/jobs/{job['id']}/cancel")).status_code == 409
            assert (await call("GET", f"/jobs/{job['id']}")).status_code == 200
            assert (await call("GET", "/jobs/nope")).status_code == 404
            assert (await call("GET", "/jobs", params={"state": "succeeded", "limit": 5})).status_code == 200
            assert (await call("GET", "/jobs", params={"limit": 0})).status_code == 400
            counts = (await call("GET", "/jobs/counts")).json()["counts"]
            assert counts["succeeded"]["function"] >= 2 and set(counts) >= {"queued", "running", "lost"}
            logs = await call("GET", f"/jobs/{job['id']}/logs", params={"follow": 1})
            lines = [json.loads(line) for line in logs.text.splitlines()]
            assert [line["line"] for line in lines] == ["line 0", "line 1"]
            schema = json.loads(spec_path.read_text())["components"]["schemas"]["LogLine"]
            for line in lines:
                jsonschema.validate(line, schema)
            assert (await call("GET", "/openapi.json")).json() == json.loads(spec_path.read_text())
            assert (await call("GET", "/jobs", headers={"Authorization": "Bearer wrong"})).status_code == 403
    operations = set()
    for response in exchanges:
        request = _Request(response.request)
        openapi.validate_response(request, _Response(response))  # raises on any mismatch
        if response.status_code < 400:
            openapi.validate_request(request)
        operations.add((request.method, response.status_code))
    described = {(m, int(code)) for item in json.loads(spec_path.read_text())["paths"].values()
                 for m, op in item.items() for code in op["responses"]}
    assert len(operations) >= 9 and operations <= described


async def test_a_kernel_stopped_with_sigterm_finishes_what_runs_and_keeps_what_waits(tmp_path: Path) -> None:
    data, runs = tmp_path / "data", tmp_path / "runs"
    runs.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = await _start(data, port)
    try:
        token = (data / "jobs.token").read_text().strip()
        async with AsyncClient(url, token=token) as client:
            running = await client.submit(function="tests.tasks:touch_then_wait", args=[str(runs / "running"), 1.0])
            waiting = [await client.submit(function="tests.tasks:touch", args=[str(runs / f"w{i}")]) for i in range(3)]
            for _ in range(100):
                if (runs / "running").exists():
                    break
                await asyncio.sleep(0.05)
            proc.terminate()  # SIGTERM: a graceful stop
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not any((runs / f"w{i}").exists() for i in range(3))  # none ran during the stop...
    proc = await _start(data, port)
    try:
        async with AsyncClient(url, token=token) as client:
            assert (await client.status(running.id)).state == JobState.SUCCEEDED  # ...what ran, finished
            for job in waiting:  # ...and what waited runs now, once
                assert await client.result(job.id, timeout=30) == str(runs / f"w{waiting.index(job)}")
        assert all((runs / f"w{i}").read_text() == "ran\n" for i in range(3))
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize("operation", ["submit", "status", "wait", "result", "cancel", "counts", "list", "logs"])
async def test_both_clients_say_the_same_when_the_api_cannot_be_reached(operation: str) -> None:
    """The operations are written once for both clients: a kernel that is not there is
    the same ClientError, naming the address, from either."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{probe.getsockname()[1]}"
    args: dict[str, tuple[Any, ...]] = {"submit": ({"function": "math:factorial"},), "counts": (), "list": ()}
    given = args.get(operation, ("some-job",))

    def blocking() -> str:
        with Client(address, token="t", timeout=5) as sync, pytest.raises(ClientError) as failed:
            out = getattr(sync, operation)(*given)
            if operation == "logs":
                list(out)
        return str(failed.value)

    async with AsyncClient(address, token="t", timeout=5) as client:
        with pytest.raises(ClientError) as failed:
            if operation == "logs":
                [line async for line in client.logs(*given)]
            else:
                await getattr(client, operation)(*given)
    for message in (str(failed.value), await anyio.to_thread.run_sync(blocking)):
        assert message.startswith(f"cannot reach the job API at {address}: "), message


async def test_revoking_a_jobs_call_by_task_id_cancels_the_job(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path, em={"minWorkers": 1, "maxWorkers": 1}) as (kernel, client, _token):
        em = kernel.get_service("execution-manager")
        job = await client.submit(function="tests.tasks:slow", args=[30.0])
        for _ in range(200):
            calls = [c for w in await em.workers() for c in w.calls]
            if calls:
                break
            await asyncio.sleep(0.05)
        [call] = calls
        assert em.revoke(call.task_id) == "running"
        ended = await client.wait(job.id, 10)
        assert ended.state == JobState.CANCELLED and "was revoked and stopped" in (ended.error or ""), ended
        assert (await client.submit(function="math:factorial", args=[5])).id  # the pool serves on


async def test_every_line_about_a_jobs_call_names_the_job(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    async with jobs_kernel(tmp_path) as (kernel, client, _token):
        events: list[dict[str, Any]] = []
        kernel.get_service("execution-manager").subscribe("task-failed", lambda _e, p: events.append(dict(p)))
        with capture_logs() as logs:
            job = await client.submit(function="tests.tasks:log_with_logging", args=[3])
            assert (await client.wait(job.id, 20)).state == JobState.SUCCEEDED
            failing = await client.submit(function="tests.tasks:raise_custom", args=["no"])
            assert (await client.wait(failing.id, 20)).state == JobState.FAILED
        worker_line = next(e for e in logs if e["event"] == "row 3 is bad")
        assert worker_line["job_id"] == job.id and worker_line["task_id"]
        failed = next(e for e in logs if e["event"] == "call failed")
        assert failed["job_id"] == failing.id
        assert [e["job_id"] for e in events] == [failing.id]  # and its events


async def test_the_job_list_pages_past_its_limit(tmp_path: Path) -> None:
    async with jobs_kernel(tmp_path) as (kernel, client, _token):
        made = [(await client.submit(function="math:factorial", args=[i], name=f"j{i}")).id for i in range(7)]
        seen, after, pages = [], None, 0
        while True:
            page = await client.list(limit=3, after=after)
            seen += [j.id for j in page]
            pages += 1
            if page.next is None:
                break
            after = page.next
        assert seen == made[::-1] and pages == 3  # newest first, each once: 3 + 3 + 1
        with pytest.raises(JobRejected, match="after='nope' names no job") as bad:
            await client.list(after="nope")
        assert bad.value.status == 400
        api = ["--api", kernel.get_service("jobs").address, "--token-file", str(tmp_path / "jobs.token")]
        code, out, err = await _cli("jobs", *api, "--limit", "5")
        assert code == 0 and f"more: kernel jobs --after {made[2]}" in out, (out, err)


def test_a_function_is_looked_for_in_its_modules_source_never_run(tmp_path: Path) -> None:
    import sys

    from microkernel.services.jobs.tasks import defines, importable

    pkg = tmp_path / "unrun_pkg_for_jobs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        "raise RuntimeError('never run me')\n"
        "import os as _os\n"
        "def plain(): pass\n"
        "async def later(): pass\n"
        "class Report:\n    def nightly(self): pass\n"
        "if _os.name == 'posix':\n    def posix_only(): pass\n"
        "try:\n    import json as fast_json\nexcept ImportError:\n    fast_json = None\n"
        "TABLE: dict = {}\n")
    (pkg / "lazy.py").write_text("def __getattr__(name): return name\n")
    (pkg / "star.py").write_text("from os.path import *\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert importable("unrun_pkg_for_jobs.mod")
        for name in ("plain", "later", "Report", "posix_only", "fast_json", "TABLE", "_os"):
            assert defines("unrun_pkg_for_jobs.mod", name) is True, name
        assert defines("unrun_pkg_for_jobs.mod", "missing") is False
        assert importable("unrun_pkg_for_jobs.lazy") and defines("unrun_pkg_for_jobs.lazy", "anything") is None
        assert importable("unrun_pkg_for_jobs.star") and defines("unrun_pkg_for_jobs.star", "join") is None
        assert defines("math", "factorial") is None  # no Python source: the worker will tell
        assert "unrun_pkg_for_jobs.mod" not in sys.modules  # read, never run
    finally:
        sys.path.remove(str(tmp_path))
