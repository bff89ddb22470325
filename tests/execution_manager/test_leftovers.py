"""Nothing a call starts outlives its worker: a worker leads its own process group, and
whatever is left in it when the worker ends (a command, a subprocess) is killed with it,
however the worker ended: its call cancelled or timed out, the worker killed, or the
kernel gone."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import CallTimeoutError, WorkerCrashedError
from tests import tasks
from tests.conftest import EM_LOCAL
from tests.nodes import process_gone, until

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


async def _child_of_a_running_call(em: object, pid_file: Path, **options: object) -> tuple[asyncio.Future, int]:
    call = em.submit(tasks.spawn_and_wait, str(pid_file), 120, **options)  # type: ignore[attr-defined]
    await until(pid_file.exists, 10, "the call's command started")
    return call, _pid_in(pid_file)


def _pid_in(pid_file: Path) -> int:
    return int(pid_file.read_text())


async def test_a_timed_out_calls_command_ends_with_it(tmp_path: Path) -> None:
    async with Kernel([], settings={"execution-manager": EM_LOCAL}) as kernel:
        em = kernel.get_service("execution-manager")
        call, child = await _child_of_a_running_call(em, tmp_path / "pid", timeout=1.5)
        with pytest.raises(CallTimeoutError):
            await call
        await until(lambda: process_gone(child), 5, f"the command (pid {child}) ended")
        assert await em.submit(tasks.inc, 1) == 2  # and the pool serves on


async def test_a_cancelled_calls_command_ends_with_it(tmp_path: Path) -> None:
    async with Kernel([], settings={"execution-manager": EM_LOCAL}) as kernel:
        em = kernel.get_service("execution-manager")
        call, child = await _child_of_a_running_call(em, tmp_path / "pid")
        call.cancel()
        await until(lambda: process_gone(child), 5, f"the command (pid {child}) ended")


async def test_a_killed_workers_command_ends_with_it(tmp_path: Path) -> None:
    async with Kernel([], settings={"execution-manager": EM_LOCAL}) as kernel:
        em = kernel.get_service("execution-manager")
        call, child = await _child_of_a_running_call(em, tmp_path / "pid")
        worker = psutil.Process(child).ppid()
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            await call
        await until(lambda: process_gone(child), 5, f"the command (pid {child}) ended")


def test_a_sigkilled_kernels_workers_take_their_commands_along(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from kernel import Kernel
        from tests import tasks

        async def main():
            settings = {{"execution-manager": {EM_LOCAL!r}}}
            async with Kernel([], settings=settings) as kernel:
                em = kernel.get_service("execution-manager")
                call = em.submit(tasks.spawn_and_wait, {str(pid_file)!r}, 120)
                await asyncio.sleep(120)

        asyncio.run(main())
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.DEVNULL) as proc:
        try:
            for _ in range(400):
                if pid_file.exists() or proc.poll() is not None:
                    break
                time.sleep(0.05)
            assert pid_file.exists(), "the call's command did not start"
            child = int(pid_file.read_text())
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            deadline = time.monotonic() + 5  # (it may be gone before we look: that is the point)
            while not process_gone(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert process_gone(child), f"the command (pid {child}) outlived its kernel"
        finally:
            proc.kill()
