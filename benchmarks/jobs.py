"""Benchmark: jobs from outside the kernel beside huey (SQLite storage) and Celery (a
Redis broker and result backend, Debian's redis-server started here), in one run.

Each system gets 2 worker processes on this machine and runs a no-op task:

- latency: one job at a time, submit then wait for its result (p50, p99);
- throughput: ``--jobs`` jobs submitted as fast as the client goes, then every result;
- ours only, ``--depth``: with both workers held, the enqueue rate of the first and the
  last thousand of ``--depth`` queued jobs, then the dequeue rate of the first and the
  last thousand as they drain (a queue that slows with depth shows it here).

huey's consumer polls its queue; it runs with ``--delay 0.001 --max-delay 0.01`` (its
default waits up to 10 s between polls). Celery runs prefork with 2 processes and
without gossip, mingle and heartbeats.

    python -m benchmarks.jobs [--jobs 10000] [--latency 1000] [--depth 100000] [--only ours huey celery]
                              [--store postgresql://...]   # ours on a shared PostgreSQL store
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
NOOP = "benchmarks.tasks:inc"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:g} s")


@contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": 1000 * statistics.median(samples),
            "p99_ms": 1000 * samples[min(len(samples) - 1, int(len(samples) * 0.99))]}


def _latency(one: Callable[[], Any], n: int) -> dict[str, float]:
    for _ in range(min(50, n)):  # warm: workers started, connections open
        one()
    took = []
    for _ in range(n):
        t = time.perf_counter()
        one()
        took.append(time.perf_counter() - t)
    return _percentiles(took)


# -- ours ----------------------------------------------------------------------------


@contextmanager
def ours(folder: Path, store: str | None = None) -> Iterator[tuple[str, str]]:
    port = free_port()
    (folder / "services").mkdir()
    argv = [sys.executable, "-m", "kernel", "run", str(folder / "services"), "--no-http",
            "--set", f"jobs.api={json.dumps({'port': port})}", "--set", f"jobs.dataDir={json.dumps(str(folder))}",
            "--set", f"execution-manager.minWorkers={WORKERS}", "--set", f"execution-manager.maxWorkers={WORKERS}"]
    if store is not None:
        argv += ["--set", f"jobs.store={json.dumps(store)}"]
    with _process(argv, _env(), folder / "kernel.log") as proc:
        _wait_port(port, proc, "the kernel")
        yield f"http://127.0.0.1:{port}", (folder / "jobs.token").read_text().strip()


def run_ours(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from microkernel.services.jobs import AsyncClient, Client

    with ours(folder, args.store) as (url, token):
        with Client(url, token=token) as client:
            def one() -> None:
                job = client.submit(function=NOOP, args=[1])
                assert client.result(job.id, timeout=30) == 2
            latency = _latency(one, args.latency)

        async def burst(n: int) -> float:
            async with AsyncClient(url, token=token) as client:
                gate = asyncio.Semaphore(32)

                async def submit(i: int) -> str:
                    async with gate:
                        return (await client.submit(function=NOOP, args=[i])).id

                async def result(job_id: str) -> None:
                    async with gate:
                        await client.result(job_id, timeout=300)

                t = time.perf_counter()
                ids = await asyncio.gather(*(submit(i) for i in range(n)))
                await asyncio.gather(*(result(job_id) for job_id in ids))
                return n / (time.perf_counter() - t)

        out: dict[str, Any] = {**latency, "jobs_per_s": asyncio.run(burst(args.jobs))}
        if args.depth:
            out.update(asyncio.run(_depth(url, token, args.depth)))
        return out


async def _depth(url: str, token: str, depth: int) -> dict[str, float]:
    """Enqueue and dequeue rates at the queue's two ends (both workers held meanwhile)."""
    from microkernel.services.jobs import AsyncClient

    edge = min(1000, depth // 4)
    gate_file = Path(tempfile.mkdtemp(prefix="bench-gate-")) / "open"
    async with AsyncClient(url, token=token) as client:
        for _ in range(WORKERS):  # both workers held until the gate opens: the jobs below queue
            await client.submit(function="benchmarks.tasks:hold_until", args=[str(gate_file)])

        async def fill(n: int) -> tuple[float, list[str]]:
            """Submit ``n`` jobs, 32 in flight; the rate, and the ids in submission order."""
            numbers, ids = iter(range(n)), [""] * n

            async def one_by_one() -> None:
                for i in numbers:
                    ids[i] = (await client.submit(function=NOOP, args=[i])).id

            t = time.perf_counter()
            await asyncio.gather(*(one_by_one() for _ in range(32)))
            return n / (time.perf_counter() - t), ids

        enqueue_first, first = await fill(edge)
        await fill(depth - 2 * edge)
        enqueue_last, last = await fill(edge)
        # The queue is first-in first-out within a priority: the first thousand run first.
        opened = time.perf_counter()
        gate_file.touch()
        await client.wait(first[-1], 600)
        dequeue_first = edge / (time.perf_counter() - opened)
        await client.wait(last[0], 600)
        near_end = time.perf_counter()
        await client.wait(last[-1], 600)
        dequeue_last = edge / max(time.perf_counter() - near_end, 1e-6)
        return {"depth": depth, "enqueue_at_0_per_s": enqueue_first, "enqueue_at_depth_per_s": enqueue_last,
                "dequeue_at_depth_per_s": dequeue_first, "dequeue_near_0_per_s": dequeue_last}


# -- huey ----------------------------------------------------------------------------


def run_huey(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    db = folder / "huey.db"
    env = _env(BENCH_HUEY_DB=str(db))
    os.environ["BENCH_HUEY_DB"] = str(db)
    from benchmarks import huey_app

    argv = [sys.executable, "-m", "huey.bin.huey_consumer", "benchmarks.huey_app.huey", "-w", str(WORKERS),
            "-k", "process", "-d", "0.001", "-m", "0.01", "-b", "1.15", "-q"]
    with _process(argv, env, folder / "huey.log"):
        time.sleep(1.0)

        def one() -> None:
            assert huey_app.inc(1)(blocking=True, timeout=30) == 2
        latency = _latency(one, args.latency)
        t = time.perf_counter()
        results = [huey_app.inc(i) for i in range(args.jobs)]
        for result in results:
            result(blocking=True, timeout=300)
        return {**latency, "jobs_per_s": args.jobs / (time.perf_counter() - t)}


# -- celery --------------------------------------------------------------------------


def run_celery(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    server = shutil.which("redis-server")
    if server is None:
        return {"error": "redis-server is not installed (Debian: apt-get install redis-server)"}
    port = free_port()
    redis = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with _process(redis, _env(), folder / "redis.log") as redis_proc:
        _wait_port(port, redis_proc, "redis-server")
        url = f"redis://127.0.0.1:{port}/0"
        os.environ["BENCH_CELERY_URL"] = url
        from benchmarks import celery_app

        argv = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker", "-c", str(WORKERS),
                "-P", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
        with _process(argv, _env(BENCH_CELERY_URL=url), folder / "celery.log"):
            celery_app.inc.delay(0).get(timeout=60)  # up

            def one() -> None:
                assert celery_app.inc.delay(1).get(timeout=30) == 2
            latency = _latency(one, args.latency)
            t = time.perf_counter()
            results = [celery_app.inc.delay(i) for i in range(args.jobs)]
            for result in results:
                result.get(timeout=300)
            return {**latency, "jobs_per_s": args.jobs / (time.perf_counter() - t)}


CONTENDERS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "ours": run_ours, "huey": run_huey, "celery": run_celery}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency", type=int, default=1000, help="jobs timed one at a time")
    parser.add_argument("--depth", type=int, default=100_000,
                        help="queue depth for the enqueue/dequeue rates (0: skip)")
    parser.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--store", metavar="URL", help="ours on this PostgreSQL job store (default: SQLite)")
    parser.add_argument("--json", metavar="FILE", help="write the figures here too")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
            try:
                results[name] = CONTENDERS[name](args, Path(folder))
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    print(f"\n{args.jobs:,} no-op jobs, {WORKERS} worker processes each; latency over {args.latency:,} "
          "jobs one at a time\n")
    print(f"{'':8} {'p50 ms':>8} {'p99 ms':>8} {'jobs/s':>9}   ours ÷ theirs: p50 (lower better), jobs/s (higher)")
    mine = results.get("ours", {})
    for name, res in results.items():
        if "error" in res:
            print(f"{name:8} {res['error']}")
            continue
        ratio = ""
        if name != "ours" and "p50_ms" in mine:
            ratio = f"   {mine['p50_ms'] / res['p50_ms']:.2f}  {mine['jobs_per_s'] / res['jobs_per_s']:.2f}"
        print(f"{name:8} {res['p50_ms']:8.2f} {res['p99_ms']:8.2f} {res['jobs_per_s']:9,.0f}{ratio}")
    if "enqueue_at_0_per_s" in mine:
        print(f"\nours, {mine['depth']:,} jobs queued behind busy workers (jobs/s): enqueue at depth 0 "
              f"{mine['enqueue_at_0_per_s']:,.0f}, at {mine['depth']:,} {mine['enqueue_at_depth_per_s']:,.0f}; "
              f"dequeue at {mine['depth']:,} {mine['dequeue_at_depth_per_s']:,.0f}, near 0 "
              f"{mine['dequeue_near_0_per_s']:,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
