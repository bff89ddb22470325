"""``kernel demo``: the CPU-heavy example over the pool, against one process.

The example services are found by path and loaded by the kernel, like any user's.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kernel import Kernel


def examples_folder() -> Path:
    """The folder of the example services (this package's)."""
    return Path(__file__).resolve().parent


def _spans(limit: int, parts: int) -> list[tuple[int, int]]:
    # Later numbers cost more to test: cut by equal work (~ n^1.5), not equal length.
    edges = [round(limit * (i / parts) ** (2 / 3)) for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


async def run_demo(limit: int, workers: int, parts: int) -> dict[str, Any]:
    console = Console(stderr=False)
    settings = {"execution-manager": {"minWorkers": workers, "maxWorkers": workers, "inProcess": False}}
    async with Kernel([examples_folder()], settings=settings) as kernel:
        em = kernel.get_service("execution-manager")
        counter = kernel.get_service("prime-counter")
        console.print(f"[bold]Counting primes below {limit:,}[/] on {workers} worker processes")

        plain = type(counter).__distributed_methods__["count_range"]
        t0 = time.perf_counter()
        serial = await asyncio.to_thread(plain, counter, 0, limit)
        serial_s = time.perf_counter() - t0
        console.print(f"one process:  {serial:,} primes in {serial_s:.2f} s")

        spans = _spans(limit, parts)
        columns = (TextColumn("pool"), BarColumn(), MofNCompleteColumn(), TextColumn("numbers tested"),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            # The bar is fed by the workers' own progress reports (kernel.task.progress).
            bar = progress.add_task("pool", total=limit)
            tested = [0.0] * len(spans)

            def advance(i: int, size: int, update: Any) -> None:
                tested[i] = update.fraction * size
                progress.update(bar, completed=sum(tested))

            t0 = time.perf_counter()
            handles = []
            for i, (a, b) in enumerate(spans):
                handle = counter.count_range(a, b)
                handle.on_progress(functools.partial(advance, i, b - a))
                handles.append(handle)
            counts = await asyncio.gather(*handles)
            total = sum(counts)
            pool_s = time.perf_counter() - t0
        if total != serial:
            raise RuntimeError(f"the pool counted {total} primes, one process {serial}")
        speedup = serial_s / pool_s
        console.print(
            f"pool:         {total:,} primes in {pool_s:.2f} s  ->  [bold green]{speedup:.2f}x[/] "
            f"speed-up ({speedup / workers:.0%} of {workers} workers)"
        )
        stats = await em.get_stats()
        table = Table(title="await em.get_stats()")
        for col in ("worker", "type", "state", "pid", "running", "done", "failed", "rss MiB"):
            table.add_column(col)
        for w in stats.worker_details:
            table.add_row(w.id, w.node_type, w.state, str(w.pid), str(w.running), str(w.done),
                          str(w.failed), f"{w.memory_rss / 2**20:.0f}")
        console.print(table)
        load = stats.system_load
        console.print(
            f"workers {stats.workers} (min {stats.min_workers}, max {stats.max_workers}) · "
            f"done {stats.tasks_done} · failed {stats.tasks_failed} · queued {stats.queued_tasks} · "
            f"cpu {load.cpu_percent:.0f}% · memory {load.memory_percent:.0f}%"
        )
        return {"serial_s": serial_s, "pool_s": pool_s, "speedup": speedup, "primes": total}
