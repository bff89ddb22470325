"""The first hour, as a newcomer meets it: the real ``kernel`` command (the console
script, as installed; never ``python -m``, which would put the current folder on the
path for us) started in an app's own folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_service

KERNEL = str(Path(sys.executable).with_name("kernel"))


def env(**extra: str) -> dict[str, str]:
    """This test's environment (its own data folder, from conftest), without a
    PYTHONPATH that would put code on the path for the kernel."""
    return {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}, **extra}


def make_app(root: Path) -> Path:
    """An app folder as a newcomer writes one: its own modules beside its services."""
    app = root / "app"
    (app / "plugins").mkdir(parents=True)
    (app / "helpers.py").write_text("def greet(name):\n    return f'hello {name}'\n")
    (app / "mytasks.py").write_text("def work(x):\n    return x * 2\n")
    (app / "plugins" / "__init__.py").write_text("GREETING = 'from the app plugins package'\n")
    write_service(app / "services", "hello", {"dependencies": ["execution-manager"]}, """
        from pathlib import Path

        import helpers
        import plugins
        from kernel import BaseService

        class Hello(BaseService):
            async def start(self):
                Path("started.txt").write_text(helpers.greet("app") + ", " + plugins.GREETING)
    """)
    return app


class Running:
    """A ``kernel run`` process and what it has said on stderr so far."""

    def __init__(self, cwd: Path, *argv: str) -> None:
        self.proc = subprocess.Popen([KERNEL, "--log-json", "run", *argv], cwd=cwd, env=env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []

    def until(self, text: str) -> str:
        """Read stderr up to the first line holding ``text``; that line."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"the kernel ended (code {self.proc.wait()}) before saying {text!r}:\n"
                             + "".join(self.lines))

    def address(self, prefix: str) -> str:
        """The address on the line ``kernel run`` prints for ``prefix`` (``jobs:``)."""
        line = next((seen for seen in self.lines if seen.startswith(prefix)), None) or self.until(prefix)
        return line.split()[1].rstrip("/")

    def end(self, timeout: float = 30) -> str:
        """The rest of stderr once the process has ended."""
        _, err = self.proc.communicate(timeout=timeout)
        return "".join(self.lines) + err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.kill()


def kernel(*argv: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KERNEL, *argv], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


# -- 1. the app's own code ----------------------------------------------------------------


def test_kernel_run_imports_the_apps_own_code_in_the_kernel_and_its_workers(
        tmp_path: Path, running: list[Running]) -> None:
    app = make_app(tmp_path)
    run = Running(app, "services", "--set", "jobs.api.port=0", "--set", "execution-manager.http=null")
    running.append(run)
    api = run.address("jobs:")
    assert (app / "started.txt").read_text() == "hello app, from the app plugins package"
    # A function of the app's, by reference, from a shell elsewhere: it runs in a worker.
    out = kernel("submit", "--api", api, "--function", "mytasks:work", "--arg", "21", "--wait", cwd=tmp_path)
    assert (out.returncode, out.stdout.strip()) == (0, "42"), out.stderr
    out = kernel("submit", "--api", api, "--function", "mytasks:work", "--arg", "ab", "--wait", cwd=tmp_path)
    assert (out.returncode, out.stdout.strip()) == (0, '"abab"'), out.stderr  # a bare word is a string
    run.proc.send_signal(signal.SIGTERM)
    err = run.end()
    assert run.proc.returncode == 0 and "Traceback" not in err


@pytest.mark.parametrize("shadow", ["kernel.py", "microkernel/__init__.py"])
def test_a_module_of_the_app_named_like_ours_is_refused_naming_it(tmp_path: Path, shadow: str) -> None:
    app = make_app(tmp_path)
    (app / shadow).parent.mkdir(exist_ok=True)
    (app / shadow).write_text("raise SystemExit('the app module was imported')\n")
    out = kernel("run", "services", cwd=app)
    named = app / shadow.partition("/")[0]
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"kernel: error: {named}") and "rename it" in out.stderr, out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_a_plain_folder_named_like_ours_is_no_shadow(tmp_path: Path, running: list[Running]) -> None:
    app = make_app(tmp_path)
    (app / "kernel").mkdir()  # notes, say: no __init__.py, so never imported in place of ours
    (app / "kernel" / "README").write_text("notes")
    run = Running(app, "services", "--no-http")
    running.append(run)
    run.until("kernel running:")
    run.proc.send_signal(signal.SIGTERM)
    assert run.end() and run.proc.returncode == 0


def test_workers_never_import_a_module_of_the_current_folder_in_place_of_ours(tmp_path: Path) -> None:
    here, scripts = tmp_path / "here", tmp_path / "scripts"
    here.mkdir()
    scripts.mkdir()
    (here / "kernel.py").write_text("raise ImportError('a kernel.py of the current folder was imported')\n")
    (scripts / "app.py").write_text(textwrap.dedent("""
        import asyncio, operator
        from kernel import Kernel

        async def main():
            settings = {"execution-manager": {"minWorkers": 1, "maxWorkers": 1, "inProcess": False}}
            async with Kernel([], settings=settings) as kernel:
                print(await kernel.get_service("execution-manager").submit(operator.add, 1, 2))

        asyncio.run(main())
    """))
    out = subprocess.run([sys.executable, str(scripts / "app.py")], cwd=here, env=env(), capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "3"), out.stderr


# -- 2. a failing service says what broke ---------------------------------------------------


@pytest.mark.parametrize(("code", "message"), [
    ("    async def start(self):\n        assert 1 + 1 == 3\n",
     "kernel: error: service 'broken' failed to start: AssertionError\n"
     "  at services/broken/service.py:5, in start: assert 1 + 1 == 3\n"),
    ("    async def start(self):\n        settings = {}\n        settings['missing']\n",
     "kernel: error: service 'broken' failed to start: KeyError: 'missing'\n"
     "  at services/broken/service.py:6, in start: settings['missing']\n"),
    ("    pass\nundefined_name + 1\n",
     "kernel: error: service 'broken' (services/broken/config.json) failed to load: importing service failed: "
     "NameError: name 'undefined_name' is not defined\n"
     "  at services/broken/service.py:5, in <module>: undefined_name + 1\n"),
])
def test_a_failing_service_prints_its_error_and_the_users_own_line_once(
        tmp_path: Path, code: str, message: str) -> None:
    write_service(tmp_path / "services", "broken", {}, "from kernel import BaseService\n\nclass Broken(BaseService):\n"
                  + code)
    out = kernel("--log-level", "error", "run", "services", "--no-http", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr == message
    assert "Traceback" not in out.stderr and "kernel/kernel.py" not in out.stderr


# -- 3. Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_during_start_up_stops_what_started_and_the_service_starting(
        tmp_path: Path, running: list[Running]) -> None:
    write_service(tmp_path / "services", "slow", {"dependencies": ["execution-manager"]}, """
        import asyncio
        from kernel import BaseService

        class Slow(BaseService):
            async def start(self):
                await asyncio.sleep(60)
    """)
    run = Running(tmp_path, "services", "--no-http", "--set", "execution-manager.minWorkers=1")
    running.append(run)
    run.until('"execution manager started"')
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    err = run.end(timeout=20)
    assert time.monotonic() - t0 < 10
    assert run.proc.returncode == 0 and "Traceback" not in err, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "stopping on signal" in events and "kernel started" not in events
    # no_process_left_behind (conftest) checks that the workers ended with it


def test_the_stop_says_its_deadline_and_a_second_ctrl_c_stops_a_running_job_at_once(
        tmp_path: Path, running: list[Running]) -> None:
    run = Running(tmp_path, str(tmp_path), "--set", "jobs.api.port=0", "--set", "execution-manager.http=null",
                  "--set", "execution-manager.drainTimeout=60", "--stop-timeout", "45")
    running.append(run)
    api = run.address("jobs:")
    job_id = kernel("submit", "--api", api, "--function", "time:sleep", "--arg", "60").stdout.strip()
    deadline = time.monotonic() + 20
    while json.loads(kernel("job", job_id, "--api", api, "--json").stdout)["state"] != "running":
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.1)
    run.proc.send_signal(signal.SIGINT)
    said = json.loads(run.until("stopping 2 services"))["event"]
    assert said.startswith("stopping 2 services: running work gets up to 45 s in all; a second Ctrl-C")
    time.sleep(1.0)
    assert run.proc.poll() is None  # the job is given its time
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    err = run.end(timeout=20)
    assert time.monotonic() - t0 < 5, err
    assert run.proc.returncode == 0 and "Traceback" not in err, err


# -- 4-5. ports and what is skipped -----------------------------------------------------------


def test_the_job_api_port_is_ours_and_the_defaults_agree() -> None:
    from microkernel.services.execution_manager import commands as em_commands
    from microkernel.services.execution_manager.executors import TOKEN_ENV
    from microkernel.services.jobs import client, commands, settings

    assert settings.DEFAULT_PORT not in (8786, 8787, 8765, 8790)  # Dask's scheduler and dashboard, nodes, ours
    assert commands.DEFAULT_URL == client.DEFAULT_URL == f"http://127.0.0.1:{settings.DEFAULT_PORT}"
    assert em_commands.TOKEN_ENV == TOKEN_ENV


def test_what_is_skipped_is_said(tmp_path: Path, running: list[Running]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "apps" / "nomanifest").mkdir(parents=True)
    (tmp_path / "apps" / "nomanifest" / "service.py").write_text("")
    run = Running(tmp_path, "empty", "apps", "--no-http")
    running.append(run)
    run.until("kernel running:")
    run.proc.send_signal(signal.SIGTERM)
    warnings = [json.loads(line) for line in run.end().splitlines() if '"warning"' in line]
    assert [w["event"] for w in warnings] == [
        "no service found in empty: a service is a folder with a config.json manifest (and a service.py)",
        "skipped apps/nomanifest: it has a service.py but no config.json; a service folder needs one, even {} "
        "(the name is the folder's)",
        "no service found in apps: a service is a folder with a config.json manifest (and a service.py)",
    ]


def test_max_workers_0_alone_makes_a_coordinator() -> None:
    from microkernel.services.execution_manager.settings import Settings

    coordinator = Settings.model_validate({"maxWorkers": 0, "nodes": {"port": 0}})
    assert (coordinator.min_workers, coordinator.max_workers) == (0, 0)
    with pytest.raises(ValueError, match=r"minWorkers \(1\) is above maxWorkers \(0\)"):
        Settings.model_validate({"minWorkers": 1, "maxWorkers": 0, "nodes": {"port": 0}})


# -- 7. what is missing or wrong ---------------------------------------------------------------


def test_the_dask_transport_without_dask_says_what_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['distributed'] = None; from kernel.cli import main; "
            "raise SystemExit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "--log-level", "error", "run", str(tmp_path), "--no-http",
                          "--set", 'execution-manager.nodes={"transport": "dask", "local": {}}'],
                         env=env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "the dask transport needs Dask's distributed package: pip install 'microkernel-em[dask]'" in out.stderr
    assert "No module named" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("what", ["dashboard:", "jobs:"])
def test_a_node_pointed_at_the_kernels_http_ports_stops_saying_what_it_reached(
        tmp_path: Path, running: list[Running], what: str) -> None:
    run = Running(tmp_path, str(tmp_path), "--set", "jobs.api.port=0", "--set", "execution-manager.http.port=0")
    running.append(run)
    address = run.address(what).replace("http://", "ws://")
    node = subprocess.run([KERNEL, "--log-json", "node", "--connect", address, "--slots", "1"], capture_output=True,
                          text=True, timeout=30, env=env(MICROKERNEL_NODE_TOKEN="t"))
    assert node.returncode == 2, node.stderr
    said = [json.loads(line)["event"] for line in node.stderr.splitlines() if '"error"' in line]
    assert len(said) == 1 and said[0].startswith(f"{address} is not a kernel's node listener: an HTTP server")
    assert "answered 200 OK instead of accepting a websocket" in said[0]
    run.proc.send_signal(signal.SIGTERM)
    run.end()


def test_a_node_pointed_at_something_that_is_not_http_stops_saying_what_answered() -> None:
    import socketserver
    import threading

    class Redisish(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(4096)
            self.request.sendall(b"+OK not a websocket\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Redisish) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            node = subprocess.run([KERNEL, "--log-json", "node", "--connect", f"ws://127.0.0.1:{server.server_address[1]}",
                                   "--slots", "1"], capture_output=True, text=True, timeout=30,
                                  env=env(MICROKERNEL_NODE_TOKEN="t"))
        finally:
            server.shutdown()
    assert node.returncode == 2, node.stderr
    said = [json.loads(line)["event"] for line in node.stderr.splitlines() if '"error"' in line]
    assert len(said) == 1 and "is not a kernel's node listener: something that does not speak HTTP" in said[0]


# -- 8-9. the command itself -------------------------------------------------------------------


def test_version_help_and_completion() -> None:
    from importlib.metadata import version

    out = kernel("--version")
    assert (out.returncode, out.stdout) == (0, f"kernel {version('microkernel-em')}\n")
    out = kernel("--help")
    assert out.returncode == 0 and "Examples:" in out.stdout and "submit" in out.stdout
    out = kernel("completion", "bash")
    assert out.returncode == 0 and "_KERNEL_COMPLETE=bash_complete" in out.stdout
    done = subprocess.run([KERNEL], env=env(_KERNEL_COMPLETE="bash_complete", COMP_WORDS="kernel sta",
                                               COMP_CWORD="1"), capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["plain,status"], done


def test_kernel_help_loads_nothing_heavy() -> None:
    """What keeps ``kernel --help`` quick (120 ms here; it was 300): the verbs' modules
    import what they need when they run."""
    code = ("import sys; from kernel.cli import main; main(['--help']); "
            "print(sorted(m for m in ('asyncio', 'pydantic', 'structlog', 'aiohttp', 'rich', 'psutil', 'msgpack', "
            "'websockets', 'urllib3') if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr.strip() == "[]", out.stderr


def test_every_verb_that_reads_has_json() -> None:
    from kernel.cli import plugin_commands

    commands = plugin_commands()
    for name in ("status", "jobs", "job", "logs", "submit", "cancel"):
        assert "--json" in {o for p in commands[name].params for o in p.opts}, name


# -- 9. small things, on a real kernel -----------------------------------------------------------


@pytest.mark.anyio
async def test_every_api_path_answers_json_errors_404_and_405_included(tmp_path: Path) -> None:
    import httpx

    from kernel import Kernel

    settings = {"execution-manager": {"minWorkers": 1, "maxWorkers": 1, "http": {"port": 0}},
                "jobs": {"api": {"port": 0}, "dataDir": str(tmp_path)}}
    async with Kernel([], settings=settings) as k, httpx.AsyncClient() as http:
        dashboard, api = k.get_service("execution-manager").http_address, k.get_service("jobs").address
        token = {"Authorization": f"Bearer {(tmp_path / 'jobs.token').read_text().strip()}"}
        for method, url, headers, status in [
            ("GET", f"{dashboard}/api/nosuch", {}, 404),
            ("DELETE", f"{dashboard}/api/status", {}, 405),
            ("GET", f"{api}/nosuch", token, 404),
            ("DELETE", f"{api}/jobs", token, 405),
            ("GET", f"{api}/jobs/nosuch", token, 404),
            ("GET", f"{api}/jobs", {}, 401),
        ]:
            answer = await http.request(method, url, headers=headers)
            assert answer.status_code == status, (method, url, answer.text)
            assert answer.headers["Content-Type"].startswith("application/json"), (method, url)
            assert answer.json()["error"], (method, url)
            if status == 405:
                assert "GET" in answer.headers["Allow"] and "allowed: GET" in answer.json()["error"]


@pytest.mark.anyio
async def test_the_data_folder_and_the_job_store_are_private_existing_ones_fixed(tmp_path: Path) -> None:
    from kernel import Kernel

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "jobs.db").touch(mode=0o644)
    settings = {"execution-manager": {"minWorkers": 1, "maxWorkers": 1},
                "jobs": {"dataDir": str(data), "api": {"port": 0}}}
    async with Kernel([], settings=settings) as k:
        k.get_service("jobs").submit({"function": "math:factorial", "args": [3]})  # the store is written
        modes = {p.name: p.stat().st_mode & 0o777 for p in [data, *data.glob("jobs.db*")]}
    assert modes == {"data": 0o700, "jobs.db": 0o600, "jobs.db-wal": 0o600, "jobs.db-shm": 0o600}


@pytest.mark.anyio
async def test_a_log_follower_that_goes_away_leaves_no_traceback(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    import httpx

    from kernel import Kernel

    settings = {"execution-manager": {"minWorkers": 1, "maxWorkers": 1},
                "jobs": {"api": {"port": 0}, "dataDir": str(tmp_path)}}
    async with Kernel([], settings=settings) as k, httpx.AsyncClient(timeout=30) as http:
        api = k.get_service("jobs").address
        token = {"Authorization": f"Bearer {(tmp_path / 'jobs.token').read_text().strip()}"}
        job = (await http.post(f"{api}/jobs", headers=token, json={
            "function": "tests.tasks:log_lines", "args": [40, 0.05]})).json()
        async with http.stream("GET", f"{api}/jobs/{job['id']}/logs?follow=1", headers=token) as stream:
            async for _ in stream.aiter_lines():
                break  # the follower reads one line and goes
        await asyncio.sleep(0.3)
        done = (await http.get(f"{api}/jobs/{job['id']}/result?wait=20", headers=token)).json()
        assert done["state"] == "succeeded"
    assert not [r for r in caplog.records if r.exc_info or "Error handling request" in r.getMessage()]


@pytest.mark.anyio
async def test_status_at_80_columns_fits_and_never_cuts_an_id_a_pid_or_a_state() -> None:
    import asyncio
    import io

    from rich.console import Console

    from kernel import Kernel
    from microkernel.services.execution_manager.monitoring.terminal import fetch, render

    settings = {"execution-manager": {"minWorkers": 3, "maxWorkers": 3, "http": {"port": 0}}}
    async with Kernel([], settings=settings) as k:
        em = k.get_service("execution-manager")
        busy = [em.submit(time.sleep, 30) for _ in range(4)]  # every worker busy, one call queued
        try:
            await asyncio.sleep(1.0)
            status = await asyncio.to_thread(fetch, em.http_address)
        finally:
            for call in busy:
                call.cancel()
    for width in (80, 100, 160):
        out = io.StringIO()
        Console(file=out, width=width, color_system=None).print(render(status, width))
        lines = out.getvalue().splitlines()
        assert max(len(line) for line in lines) <= width, out.getvalue()
        for w in status["workers"]:
            row = next(line for line in lines if f" {w['id']} " in f" {line} ")
            assert f" {w['pid']} " in row and f" {w['state']} " in row, (width, row)


def test_cancel_prints_the_state_after_it_and_output_piped_into_head_ends_quietly(
        tmp_path: Path, running: list[Running]) -> None:
    run = Running(tmp_path, str(tmp_path), "--set", "jobs.api.port=0", "--set", "execution-manager.http.port=0")
    running.append(run)
    dashboard, api = run.address("dashboard:"), run.address("jobs:")
    job_id = kernel("submit", "--api", api, "--function", "time:sleep", "--arg", "30").stdout.strip()
    deadline = time.monotonic() + 20
    while json.loads(kernel("job", job_id, "--api", api, "--json").stdout)["state"] != "running":
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.1)
    out = kernel("cancel", job_id, "--api", api, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "cancelled", out
    # A reader that takes one line and goes, as `| head -1` does.
    with subprocess.Popen([KERNEL, "status", "--url", dashboard, "--json", "--watch", "0.05"], env=env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as follower:
        assert follower.stdout is not None and follower.stderr is not None
        assert json.loads(follower.stdout.readline())["pool"]
        follower.stdout.close()
        err = follower.stderr.read()
        follower.wait(timeout=10)
    assert err == "" and follower.returncode == 1  # Click's way: quiet, and not a success
    run.proc.send_signal(signal.SIGTERM)
    run.end()
