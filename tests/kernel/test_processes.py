"""The kernel as a user runs it: the CLI, signals, and a kernel killed outright."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import EXAMPLES

KERNEL = [sys.executable, "-m", "kernel"]


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def workers_of(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if "microkernel.plugins.local.process" in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return []


def until_running(proc: subprocess.Popen[str]) -> str:
    """What ``kernel run`` wrote on stderr up to its "kernel running" line."""
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("kernel running:"):
            return "".join(lines)
    raise AssertionError("the kernel ended before it was running:\n" + "".join(lines))


def test_kernel_run_stops_cleanly_on_sigterm() -> None:
    with subprocess.Popen(
        [*KERNEL, "--log-json", "run", str(EXAMPLES), "--set", "execution-manager.minWorkers=2",
         "--set", "execution-manager.maxWorkers=2", "--set", 'execution-manager.http={"port": 0}',
         "--set", 'jobs.api={"port": 0}'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            head = until_running(proc)
            wait_for(lambda: len(workers_of(proc.pid)) == 2)
            workers = workers_of(proc.pid)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            err = head + err
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert ("kernel running: execution-manager (running), jobs (running), prime-counter (running), "
            "reporter (running)") in err
    assert "dashboard: http://127.0.0.1:" in err and "jobs: http://127.0.0.1:" in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(entry["event"] == "stopping on signal" and entry["signal"] == "SIGTERM" for entry in lines)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_kernel_run_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "config.json").write_text('{"kernelMode": "yes"}')
    out = subprocess.run([*KERNEL, "run", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.startswith(f"kernel: error: {tmp_path}/svc/config.json: kernelMode: Input should be a valid boolean")
    assert "kernelMode" in out.stderr and "Traceback" not in out.stderr

@pytest.mark.parametrize(("argv", "message"), [
    (["run", "{examples}", "--set", "execution-manager.maxWorkers=-1"],
     "kernel run: error: Invalid value for --set: --set execution-manager.maxWorkers=-1: Input should be greater "
     "than or equal to 0 (got -1)"),
    (["run", "{examples}", "--set", "execution-manager.maxWorkerz=4"],
     "kernel run: error: Invalid value for --set: --set execution-manager.maxWorkerz=4: unknown field"),
    (["run", "{examples}", "--set", "execution-manager.nodes.port=x"],
     "kernel run: error: Invalid value for --set: --set execution-manager.nodes.port=x: Input should be a valid integer"),
    (["run", "{examples}", "--set", "nosuch.x=1"],
     "kernel run: error: Invalid value for --set: --set nosuch.x=1: no service of that name is loaded (known services: "
     "execution-manager, jobs, prime-counter, reporter)"),
    (["run", "{examples}", "--set", "nodot=1"],
     "kernel run: error: Invalid value for --set: 'nodot=1': expected SERVICE.FIELD=VALUE"),
    (["run", "/no/such/folder"], "kernel run: error: Invalid value for 'PATHS...': Directory '/no/such/folder' does not exist."),
    (["run", "{examples}", "--stop-timeout", "soon"], "kernel run: error: Invalid value for '--stop-timeout': 'soon' is not a valid float range."),
    (["run", "{examples}", "--frobnicate"], "kernel run: error: No such option '--frobnicate'."),
    (["runn"], "kernel: error: No such command 'runn'. Did you mean 'run'?"),
    (["--log-level", "loud", "status"], "kernel: error: unknown log level 'LOUD'"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv: list[str], message: str) -> None:
    argv = [a.replace("{examples}", str(EXAMPLES)) for a in argv]
    out = subprocess.run([*KERNEL, *argv], capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""


def test_a_port_in_use_is_one_line_exit_code_2_and_nothing_left_running() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([*KERNEL, "--log-level", "warning", "run", str(EXAMPLES), "--set",
                              f"execution-manager.http.port={port}", "--set", "execution-manager.minWorkers=1"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1 and errors[0].startswith("kernel run: error: "), out.stderr
    assert f"--set execution-manager.http.port={port}: 127.0.0.1:{port} is already in use" in errors[0]
    assert str(port) in errors[0] and "Traceback" not in out.stderr


def test_demo_runs_and_reports_speedup() -> None:
    out = subprocess.run([*KERNEL, "demo", "--limit", "200000", "--workers", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "17,984 primes" in out.stdout and "speed-up" in out.stdout
    assert "await em.get_stats()" in out.stdout and "local-1" in out.stdout


def test_no_worker_outlives_a_sigkilled_kernel(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, time
        from kernel import Kernel

        async def main():
            settings = {{"execution-manager": {{"minWorkers": 2, "maxWorkers": 2, "inProcess": False}}}}
            async with Kernel([{str(EXAMPLES)!r}], settings=settings) as kernel:
                em = kernel.get_service("execution-manager")
                busy = [asyncio.ensure_future(em.submit(time.sleep, 60)) for _ in range(2)]
                print("ready", flush=True)
                await asyncio.sleep(60)

        asyncio.run(main())
    """))
    workers: list[psutil.Process] = []
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            workers = workers_of(proc.pid)
            assert len(workers) == 2  # both busy in a 60 s call
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            _gone, alive = psutil.wait_procs(workers, timeout=5)
            assert not alive, f"workers outlived their kernel: {alive}"
        finally:
            proc.kill()
            for w in workers:
                if w.is_running():
                    w.kill()


@pytest.mark.parametrize("argv", [["run"], ["run", "x", "--set", "nodot=1"]])
def test_cli_usage_errors(argv: list[str]) -> None:
    out = subprocess.run([*KERNEL, *argv], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "Traceback" not in out.stderr


BUSY_SERVICE = """
import time
from kernel import BaseService

class Busy(BaseService):
    async def start(self):
        em = self.get_service("execution-manager")
        self.calls = [em.submit(time.sleep, 60) for _ in range(2)]
"""


def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "config.json").write_text('{"dependencies": ["execution-manager"]}')
    (folder / "service.py").write_text(BUSY_SERVICE)
    cmd = [*KERNEL, "--log-json", "run", str(tmp_path), "--set", "execution-manager.minWorkers=2",
           "--set", "execution-manager.maxWorkers=2", "--set", "execution-manager.drainTimeout=60",
           "--set", "execution-manager.inProcess=false", "--no-http"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            until_running(proc)
            wait_for(lambda: len(workers_of(proc.pid)) == 2)
            workers = workers_of(proc.pid)
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert proc.poll() is None  # draining: the calls have 60 s
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            took = time.monotonic() - t0
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert took < 5, f"second signal took {took:.1f} s to stop the kernel"
    assert "second signal: stopping at once" in err
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_kernel_status_against_a_running_kernel() -> None:
    cmd = [*KERNEL, "--log-json", "run", str(EXAMPLES), "--set", "execution-manager.minWorkers=2",
           "--set", "execution-manager.maxWorkers=2", "--set", 'execution-manager.http={"port": 0}', "--no-jobs"]
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            url = ""
            for line in proc.stderr:
                if line.startswith("dashboard: "):
                    url = line.split()[1].rstrip("/")
                    break
            assert url.startswith("http://127.0.0.1:"), "no dashboard line"
            wait_for(lambda: len(workers_of(proc.pid)) == 2)
            out = subprocess.run([*KERNEL, "status", "--url", url, "--json"], capture_output=True, text=True,
                                 timeout=30)
            assert out.returncode == 0, out.stderr
            status = json.loads(out.stdout)
            assert {w["id"] for w in status["workers"]} >= {"local-1", "local-2"}
            assert [s["name"] for s in status["services"]] == ["execution-manager", "jobs", "prime-counter",
                                                                "reporter"]
            out = subprocess.run([*KERNEL, "status", "--url", url], capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "COLUMNS": "200"})
            assert out.returncode == 0, out.stderr
            assert "local-1" in out.stdout and "workers 2 (min 2, max 2)" in out.stdout and "idle" in out.stdout
            with subprocess.Popen([*KERNEL, "status", "--url", url, "--json", "--watch", "0.2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as watch:
                time.sleep(1.5)
                watch.send_signal(signal.SIGINT)
                followed, _ = watch.communicate(timeout=10)
            assert watch.returncode == 0
            documents = [json.loads(line) for line in followed.splitlines()]
            assert len(documents) >= 3 and all("workers" in d for d in documents)
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 0
    out = subprocess.run([*KERNEL, "status", "--url", url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith(f"kernel: error: no kernel answers at {url}")
    assert "Traceback" not in out.stderr
    out = subprocess.run([*KERNEL, "status", "--url", "localhost:8790"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--url takes http://HOST:PORT" in out.stderr
