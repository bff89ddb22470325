"""Benchmark: this project's local pool beside ProcessPoolExecutor, loky, pebble and
multiprocessing.Pool, in one run. Each contender runs in its own child process (one
process tree), on 2 workers, and the table prints each result with ours / theirs.
``ours-node`` runs the same calls on a remote node (``kernel node``, 2 slots) that
dials the kernel over loopback websockets, with no local worker. ``ours-dask`` runs
them through the dask transport on a Dask LocalCluster (2 worker processes, 1 thread
each), and ``dask`` on the same kind of cluster with ``Client.submit`` directly; the
``dask`` column's ratio is ours-dask ÷ dask (our overhead on top of Dask). Dask's
columns make fewer calls (it manages about a thousand tasks a second here).

Two more tables come from alternating rounds inside one process: ours-node beside a
local pool of a second kernel (what the node's hop costs), and ours-dask beside raw
``Client.submit`` on the same cluster (our overhead on top of Dask). The rounds share
the machine's drift, so their ratios are the steadiest figures here.

    python -m benchmarks.run [--quick] [--only NAME ...] [--loop asyncio|uvloop] [--json FILE]

``--loop`` is the event loop our kernel runs on (a program embedding the kernel picks
its own; ``kernel run`` takes uvloop when installed). The node agent always takes
uvloop when installed, as ``kernel node`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.tasks import burn, crash, echo, inc, inc_all

WORKERS = 2
MIB = b"x" * (1 << 20)


def calibrate_burn(seconds: float = 0.02) -> int:
    n = 100_000
    while True:
        t = time.perf_counter()
        burn(n)
        took = time.perf_counter() - t
        if took > 0.005:
            return int(n * seconds / took)
        n *= 4


def serial_time(burn_n: int, calls: int) -> float:
    """The serial time of ``calls`` burns: the fastest of a sample, times ``calls``.

    The fastest, not the mean, so a noisy moment cannot flatter anyone's efficiency.
    """
    best = float("inf")
    for _ in range(max(5, calls // 4)):
        t = time.perf_counter()
        burn(burn_n)
        best = min(best, time.perf_counter() - t)
    return best * calls


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- peers (sync executors) -------------------------------------------------------------


def sync_contender(name: str) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """(make, shutdown) for a concurrent.futures-like peer."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if name == "ppe-fork":
        return lambda: ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork")), lambda ex: ex.shutdown()
    if name == "ppe-spawn":
        return lambda: ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("spawn")), lambda ex: ex.shutdown()
    if name == "loky":
        import loky

        return lambda: loky.get_reusable_executor(WORKERS, reuse=False), lambda ex: ex.shutdown()
    if name == "pebble":
        import pebble

        return (lambda: pebble.ProcessPool(WORKERS, context=mp.get_context("fork")),
                lambda ex: (ex.close(), ex.join()))
    if name == "mp-pool":
        return lambda: mp.get_context("fork").Pool(WORKERS), lambda ex: (ex.close(), ex.join())
    raise SystemExit(f"unknown contender {name!r}")


def submit_fn(name: str, ex: Any) -> Callable[..., Any]:
    if name == "pebble":
        return lambda fn, *a: ex.schedule(fn, args=a)
    if name == "mp-pool":
        return lambda fn, *a: ex.apply_async(fn, a)
    return ex.submit


def result_of(name: str, fut: Any) -> Any:
    return fut.get() if name == "mp-pool" else fut.result()


def run_sync(name: str, quick: bool, burn_n: int) -> dict[str, Any]:
    make, shutdown = sync_contender(name)
    n_tiny, n_map, n_lat, n_cpu, n_mib = (4000, 50_000, 500, 60, 20) if quick else (20_000, 200_000, 2000, 200, 50)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    ex = make()
    sub = submit_fn(name, ex)
    result_of(name, sub(inc, 1))
    out["cold_start_ms"] = (time.perf_counter() - t0) * 1e3
    for _ in range(200):
        result_of(name, sub(inc, 1))
    t = time.perf_counter()
    futs = [sub(inc, i) for i in range(n_tiny)]
    for f in futs:
        result_of(name, f)
    out["tiny_per_s"] = n_tiny / (time.perf_counter() - t)
    t = time.perf_counter()
    if name == "pebble":
        list(ex.map(inc, range(n_map), chunksize=100).result())
    elif name == "mp-pool":
        ex.map(inc, range(n_map), chunksize=100)
    else:
        list(ex.map(inc, range(n_map), chunksize=100))
    out["map_per_s"] = n_map / (time.perf_counter() - t)
    lat = []
    for i in range(n_lat):
        t = time.perf_counter()
        result_of(name, sub(inc, i))
        lat.append(time.perf_counter() - t)
    out["lat_p50_us"], out["lat_p99_us"] = pct(lat, 0.5) * 1e6, pct(lat, 0.99) * 1e6
    out["cpu_serial_s"] = serial_time(burn_n, n_cpu)
    t = time.perf_counter()
    for f in [sub(burn, burn_n) for _ in range(n_cpu)]:
        result_of(name, f)
    out["cpu_wall_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_mib):
        assert len(result_of(name, sub(echo, MIB))) == len(MIB)
    out["mib_per_s"] = n_mib / (time.perf_counter() - t)
    # a worker dies mid-call, then a normal call
    t = time.perf_counter()
    if name == "mp-pool":
        out["crash"] = "hangs (not run)"  # multiprocessing.Pool never returns the call
    else:
        try:
            result_of(name, sub(crash))
            out["crash"] = "no error"
        except Exception as exc:
            out["crash"] = type(exc).__name__
        out["crash_error_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    try:
        if name == "loky":
            import loky

            ex = loky.get_reusable_executor(WORKERS)
            sub = submit_fn(name, ex)
        result_of(name, sub(inc, 1))
        out["next_call_ms"] = (time.perf_counter() - t) * 1e3
    except Exception as exc:
        out["next_call"] = f"fails: {type(exc).__name__}"
    with contextlib.suppress(Exception):  # a broken pool may not shut down cleanly
        shutdown(ex)
    return out


# -- ours -------------------------------------------------------------------------------


def sizes(quick: bool, dask: bool = False) -> tuple[int, int, int, int, int]:
    """Calls for: tiny, map items, latency samples, CPU burns, MiB echoes."""
    if dask:
        return (1000, 20_000, 200, 60, 20) if quick else (3000, 50_000, 500, 200, 50)
    return (4000, 50_000, 500, 60, 20) if quick else (20_000, 200_000, 2000, 200, 50)


def run_dask(quick: bool, burn_n: int) -> dict[str, Any]:
    """Raw Dask: Client.submit on a LocalCluster like the one ours-dask uses."""
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    n_tiny, n_map, n_lat, n_cpu, n_mib = sizes(quick, dask=True)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    cluster_options = {"n_workers": WORKERS, "threads_per_worker": 1, "processes": True,
                       "dashboard_address": "127.0.0.1:0"}
    with LocalCluster(**cluster_options) as cluster, Client(cluster) as client:
        client.submit(inc, 1, pure=False).result()
        out["cold_start_ms"] = (time.perf_counter() - t0) * 1e3
        for _ in range(200):
            client.submit(inc, 1, pure=False).result()
        t = time.perf_counter()
        client.gather([client.submit(inc, i, pure=False) for i in range(n_tiny)])
        out["tiny_per_s"] = n_tiny / (time.perf_counter() - t)
        t = time.perf_counter()
        chunks = [list(range(i, min(i + 100, n_map))) for i in range(0, n_map, 100)]  # as chunksize=100 does
        client.gather(client.map(inc_all, chunks, pure=False))
        out["map_per_s"] = n_map / (time.perf_counter() - t)
        lat = []
        for i in range(n_lat):
            t = time.perf_counter()
            client.submit(inc, i, pure=False).result()
            lat.append(time.perf_counter() - t)
        out["lat_p50_us"], out["lat_p99_us"] = pct(lat, 0.5) * 1e6, pct(lat, 0.99) * 1e6
        out["cpu_serial_s"] = serial_time(burn_n, n_cpu)
        t = time.perf_counter()
        client.gather([client.submit(burn, burn_n, pure=False) for _ in range(n_cpu)])
        out["cpu_wall_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n_mib):
            assert len(client.submit(echo, MIB, pure=False).result()) == len(MIB)
        out["mib_per_s"] = n_mib / (time.perf_counter() - t)
        t = time.perf_counter()
        try:
            client.submit(crash, pure=False).result(timeout=120)
            out["crash"] = "no error"
        except Exception as exc:
            out["crash"] = type(exc).__name__
        out["crash_error_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        client.submit(inc, 1, pure=False).result(timeout=120)
        out["next_call_ms"] = (time.perf_counter() - t) * 1e3
    return out


async def run_ours(quick: bool, burn_n: int, node: str | None = None) -> dict[str, Any]:
    import os

    from kernel import Kernel, logs

    logs.configure("warning")
    n_tiny, n_map, n_lat, n_cpu, n_mib = sizes(quick, dask=node == "dask")
    out: dict[str, Any] = {}
    em_settings: dict[str, Any] = {"minWorkers": WORKERS, "maxWorkers": WORKERS, "inProcess": False}
    if node == "websocket":
        os.environ.setdefault("MICROKERNEL_NODE_TOKEN", "benchmark-token")
        em_settings.update(minWorkers=0, maxWorkers=0, nodes={"port": 0})
    elif node == "dask":
        import logging

        logging.getLogger("distributed").setLevel(logging.ERROR)
        em_settings.update(minWorkers=0, maxWorkers=0, nodes={"transport": "dask", "local": {"workers": WORKERS}})
    t0 = time.perf_counter()
    async with Kernel([], settings={"execution-manager": em_settings}) as kernel:
        em = kernel.get_service("execution-manager")
        agent = None
        if node == "websocket":
            joined = asyncio.Event()
            em.subscribe("worker-started", lambda _e, _p: len(em.pool.fleet.members) >= WORKERS and joined.set())
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kernel", "--log-level", "warning", "node", "--connect", em.nodes_address,
                "--slots", str(WORKERS), "--node-id", "bench", stdout=subprocess.DEVNULL,
            )
            await asyncio.wait_for(joined.wait(), 60)
        try:
            await _measure(em, out, t0, n_tiny, n_map, n_lat, n_cpu, n_mib, burn_n)
            if node == "dask":
                out["same_cluster"] = await _beside_dask(em, rounds=3 if quick else 6)
            elif node == "websocket":
                out["beside_local"] = await _beside_local(em, rounds=4 if quick else 10)
        finally:
            if agent is not None:
                agent.terminate()
                await agent.wait()
    return out


async def _measure(em: Any, out: dict[str, Any], t0: float, n_tiny: int, n_map: int, n_lat: int, n_cpu: int,
                   n_mib: int, burn_n: int) -> None:
    await em.submit(inc, 1)
    out["cold_start_ms"] = (time.perf_counter() - t0) * 1e3
    for _ in range(200):
        await em.submit(inc, 1)
    t = time.perf_counter()
    await asyncio.gather(*(em.submit(inc, i) for i in range(n_tiny)))
    out["tiny_per_s"] = n_tiny / (time.perf_counter() - t)
    t = time.perf_counter()
    _ = [r async for r in em.map(inc, range(n_map), chunksize=100)]
    out["map_per_s"] = n_map / (time.perf_counter() - t)
    lat = []
    for i in range(n_lat):
        t = time.perf_counter()
        await em.submit(inc, i)
        lat.append(time.perf_counter() - t)
    out["lat_p50_us"], out["lat_p99_us"] = pct(lat, 0.5) * 1e6, pct(lat, 0.99) * 1e6
    out["cpu_serial_s"] = serial_time(burn_n, n_cpu)
    t = time.perf_counter()
    await asyncio.gather(*(em.submit(burn, burn_n) for _ in range(n_cpu)))
    out["cpu_wall_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_mib):
        assert len(await em.submit(echo, MIB)) == len(MIB)
    out["mib_per_s"] = n_mib / (time.perf_counter() - t)
    t = time.perf_counter()
    try:
        await em.submit(crash)
        out["crash"] = "no error"
    except Exception as exc:
        out["crash"] = type(exc).__name__
    out["crash_error_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    await em.submit(inc, 1, retries=3)  # on Dask the worker is replaced, not the call's executor
    out["next_call_ms"] = (time.perf_counter() - t) * 1e3


async def _beside_dask(em: Any, rounds: int) -> dict[str, float]:
    """Our Dask executor and raw ``Client.submit`` on the same cluster and client, in
    alternating rounds: our overhead on top of Dask, with the machine's drift shared."""
    client = em.listener.client
    return await _alternating({"ours": lambda i: em.submit(inc, i),
                               "dask": lambda i: client.submit(inc, i, pure=False)}, rounds, tiny=300, seq=100)


async def _beside_local(em: Any, rounds: int) -> dict[str, float]:
    """The node (``em``'s only executor) and a local pool of the same size in a second
    kernel of this process, in alternating rounds: what the node's hop costs."""
    from kernel import Kernel

    local = {"minWorkers": WORKERS, "maxWorkers": WORKERS, "inProcess": False}
    async with Kernel([], settings={"execution-manager": local}) as kernel:
        em_local = kernel.get_service("execution-manager")
        for _ in range(200):
            await em_local.submit(inc, 1)
        return await _alternating({"node": lambda i: em.submit(inc, i),
                                   "local": lambda i: em_local.submit(inc, i)}, rounds, tiny=2000, seq=250)


async def _alternating(submit: dict[str, Callable[[int], Any]], rounds: int, tiny: int, seq: int) -> dict[str, float]:
    """Tiny-call throughput and sequential latency of each way to submit, in rounds that
    alternate (and swap order) so that the machine's drift is shared."""
    rates: dict[str, list[float]] = {who: [] for who in submit}
    lat: dict[str, list[float]] = {who: [] for who in submit}
    for r in range(rounds):
        for who in (list(submit) if r % 2 == 0 else list(reversed(submit))):
            fn = submit[who]
            t = time.perf_counter()
            await asyncio.gather(*(fn(i) for i in range(tiny)))
            rates[who].append(tiny / (time.perf_counter() - t))
            for i in range(seq):
                t = time.perf_counter()
                await fn(i)
                lat[who].append(time.perf_counter() - t)
    return {f"{who}_{key}": value for who in submit for key, value in (
        ("tiny_per_s", pct(rates[who], 0.5)), ("lat_p50_us", pct(lat[who], 0.5) * 1e6),
        ("lat_p99_us", pct(lat[who], 0.99) * 1e6))}


# -- the table --------------------------------------------------------------------------

CONTENDERS = ["ours", "ours-node", "ppe-fork", "ppe-spawn", "mp-pool", "loky", "pebble", "ours-dask", "dask"]
METRICS = [  # key, label, higher is better
    ("tiny_per_s", "tiny calls, submit+gather (calls/s)", True),
    ("map_per_s", "map, chunksize 100 (calls/s)", True),
    ("lat_p50_us", "sequential latency p50 (µs)", False),
    ("lat_p99_us", "sequential latency p99 (µs)", False),
    ("cpu_eff", "CPU-bound efficiency, 2 workers", True),
    ("mib_per_s", "1 MiB in + out (MiB/s one way)", True),
    ("cold_start_ms", "cold start to first result (ms)", False),
    ("next_call_ms", "crash, then next call served (ms)", False),
]


def child(name: str, quick: bool, burn_n: int, loop: str = "asyncio") -> dict[str, Any]:
    if name.startswith("ours"):
        from kernel.cli import run_loop

        return run_loop(run_ours(quick, burn_n, node={"ours-node": "websocket", "ours-dask": "dask"}.get(name)), loop)
    if name == "dask":
        return run_dask(quick, burn_n)
    return run_sync(name, quick, burn_n)


def fmt(key: str, v: Any) -> str:
    if not isinstance(v, float | int):
        return str(v)
    if key == "cpu_eff":
        return f"{v:.0%}"
    return f"{v / 1000:.1f}k" if v >= 10_000 else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _print_pair(console: Any, pair: dict[str, float] | None, who: tuple[str, str], title: str) -> None:
    """A second table: two ways measured in alternating rounds of one process."""
    if not pair:
        return
    from rich.table import Table

    a, b = who
    table = Table(title=title)
    for column in ("metric", a, b, f"{a} ÷ {b} (>1 = {a} better)"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, label, higher in METRICS[:4]:
        if f"{a}_{key}" in pair:
            x, y = pair[f"{a}_{key}"], pair[f"{b}_{key}"]
            table.add_row(label, fmt(key, x), fmt(key, y), f"{(x / y if higher else y / x):.2f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--only", nargs="*", default=CONTENDERS, choices=CONTENDERS)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="the event loop our kernel runs on (default asyncio)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--burn", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.quick, args.burn, args.loop)))
        return
    burn_n = calibrate_burn()
    results: dict[str, dict[str, Any]] = {}
    for name in args.only:
        cmd = [sys.executable, "-m", "benchmarks.run", "--child", name, "--burn", str(burn_n), "--loop", args.loop]
        cmd += ["--quick"] if args.quick else []
        print(f"running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["cpu_eff"] = res["cpu_serial_s"] / (WORKERS * res["cpu_wall_s"])
        results[name] = res

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{WORKERS} workers, our kernel on {args.loop}; cells: value (ours ÷ theirs, >1 = ours better)")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for key, label, higher in METRICS:
        row = [label]
        for name, res in results.items():
            missing = res.get("next_call", res.get("error", "-")) if key == "next_call_ms" else res.get("error", "-")
            v = res.get(key, missing)
            cell = fmt(key, v)
            o = results.get("ours-dask" if name == "dask" else "ours", {}).get(key)
            if not name.startswith("ours") and isinstance(v, float | int) and isinstance(o, float | int) and v and o:
                ratio = o / v if higher else v / o
                cell += f" ({ratio:.2f})"
            row.append(cell)
        table.add_row(*row)
    table.add_row("crashed call raises", *[str(r.get("crash", "-")) for r in results.values()])
    console = Console(width=200)
    console.print(table)
    _print_pair(console, results.get("ours-node", {}).get("beside_local"), ("node", "local"),
                "ours-node beside a local pool in the same process, alternating rounds")
    _print_pair(console, results.get("ours-dask", {}).get("same_cluster"), ("ours", "dask"),
                "ours-dask beside raw Client.submit on the same cluster, alternating rounds")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"workers": WORKERS, "loop": args.loop, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
