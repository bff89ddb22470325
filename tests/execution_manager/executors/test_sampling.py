"""The one psutil sampler the monitor and the node agent share, on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from microkernel.services.execution_manager.executors import ProcessSampler


def test_it_reads_the_machine_and_each_process_by_the_callers_key() -> None:
    sampler: ProcessSampler[str] = ProcessSampler()
    child = subprocess.Popen(["sleep", "30"])
    try:
        reading = sampler.sample({"w1": child.pid, "me": os.getpid(), "none": None})
        assert 0 <= reading.cpu_percent <= 100 and 0 < reading.memory_percent < 100 and 0 <= reading.avg_load <= 1
        assert set(reading.processes) == {"w1"} and reading.processes["w1"][1] > 0  # RSS; not this process
        assert reading.statuses["w1"] in ("sleeping", "running")
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while sampler.sample({"w1": child.pid}).statuses["w1"] != "stopped":
            assert time.monotonic() < deadline, "a stopped process never read as stopped"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while sampler.sample({"w1": child.pid}).statuses.get("w1") != "zombie":  # killed, not yet reaped
            assert time.monotonic() < deadline, "a killed, unreaped process never read as a zombie"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    gone = sampler.sample({"w1": child.pid})  # reaped: no such process any more
    assert "w1" not in gone.processes and "w1" not in gone.statuses
