"""The benchmark still runs end to end (its figures are read by people, not asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_the_quick_benchmark_runs_ours_and_a_node_and_prints_both_tables(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "ours", "ours-node", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=220,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "our kernel on asyncio" in proc.stdout and "ours-node beside a local pool" in proc.stdout
    results = json.loads(out.read_text())["results"]
    for name in ("ours", "ours-node"):
        res = results[name]
        assert "error" not in res, res
        assert res["tiny_per_s"] > 0 and 0 < res["lat_p50_us"] <= res["lat_p99_us"]
        assert res["crash"] == "WorkerCrashedError" and res["next_call_ms"] > 0
    pair = results["ours-node"]["beside_local"]
    assert pair["node_lat_p50_us"] > 0 and pair["local_lat_p50_us"] > 0


@pytest.mark.timeout(120)
def test_a_short_soak_under_chaos_loses_nothing_and_runs_nothing_twice() -> None:
    """At most once, under load: workers are SIGKILLed and SIGSTOPped while tiny calls
    stream (sent ahead to busy workers); every call resolves, none runs twice (counted
    by the workers), and each failure is a WorkerCrashedError naming its own call."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--calls", "20000", "--chaos", "6"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    counts = {line.strip().rsplit(" ", 1)[0].strip(): line.split()[-1] for line in proc.stdout.splitlines()}
    assert "soak: 20,000 calls on 3 workers" in proc.stdout and "SIGKILL" in proc.stdout, proc.stdout
    assert counts["lost (unresolved)"] == "0" and counts["run twice"] == "0", proc.stdout
    for line in proc.stdout.splitlines():
        if line.strip().startswith("failed:"):
            assert "WorkerCrashedError" in line, proc.stdout  # typed, never anything else
        if line.strip().startswith("e.g."):
            assert "[task " in line and "worker local-" in line, line  # each names its call and worker


@pytest.mark.timeout(120)
def test_the_kernel_cost_tool_runs_and_prints_a_cost_per_call() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernel_cost", "--rounds", "2", "--calls", "500"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    best, median = (float(x) for x in re.findall(r"(\d+\.\d) µs", proc.stdout))
    assert 0 < best <= median, proc.stdout


@pytest.mark.timeout(120)
def test_the_jobs_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "jobs.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.jobs", "--jobs", "300", "--latency", "50", "--depth", "400",
         "--only", "ours", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    ours = json.loads(out.read_text())["results"]["ours"]
    assert 0 < ours["p50_ms"] <= ours["p99_ms"] and ours["jobs_per_s"] > 0
    assert ours["enqueue_at_depth_per_s"] > 0 and ours["dequeue_near_0_per_s"] > 0
    assert "400 jobs queued behind busy workers" in proc.stdout
