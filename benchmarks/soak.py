"""A soak anyone can run: many calls over the pool while a chaos loop kills and stops
random workers, and a count of what became of every call.

    python -m benchmarks.soak [--calls 1000000] [--workers 3] [--chaos 2.0] [--retries 0]

Every call writes its token to its worker's log as it begins, so calls that ran twice
are counted by the workers themselves, not by the kernel. The chaos loop, ``--chaos``
times a second, SIGKILLs a random worker (or, one time in four, SIGSTOPs it, which the
pool must notice from outside and replace). At the end it prints calls submitted,
succeeded, failed with a typed error (by type), lost (never resolved), and run twice,
plus the kernel's RSS at start and end. Lost and run twice must be 0 for calls without
retries (at most once); the exit status says whether they were.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .tasks import mark


async def soak(calls: int, workers: int, chaos: float, retries: int, window: int) -> dict[str, Any]:
    from kernel import Kernel, logs

    logs.configure("error")
    settings = {"minWorkers": workers, "maxWorkers": workers, "inProcess": False, "heartbeatTimeout": 1.0,
                "sampleInterval": 0.2, "monitorInterval": 0.5}
    me = psutil.Process()
    out: dict[str, Any] = {"calls": calls, "workers": workers, "chaos_per_s": chaos, "retries": retries}
    with tempfile.TemporaryDirectory(prefix="soak-") as log_dir:
        async with Kernel([], settings={"execution-manager": settings}) as kernel:
            em = kernel.get_service("execution-manager")
            await em.submit(mark, -1, log_dir)
            out["rss_start"] = me.memory_info().rss
            kills = collections.Counter()
            stop = asyncio.Event()
            chaos_task = asyncio.create_task(_chaos(em, chaos, kills, stop))
            outcomes: collections.Counter[str] = collections.Counter()
            examples: list[str] = []
            t0 = time.perf_counter()
            pending: set[asyncio.Future[Any]] = set()
            submitted = 0
            try:
                while submitted < calls or pending:
                    while submitted < calls and len(pending) < window:
                        pending.add(em.submit(mark, submitted, log_dir, retries=retries))
                        submitted += 1
                    done, pending = await asyncio.wait(pending, timeout=60, return_when=asyncio.FIRST_COMPLETED)
                    if not done:
                        break  # nothing resolved for a minute: what is left is lost
                    for fut in done:
                        exc = fut.exception()
                        outcomes["succeeded" if exc is None else f"failed: {type(exc).__name__}"] += 1
                        if exc is not None and len(examples) < 3:
                            examples.append(f"{type(exc).__name__}: {exc}")
            finally:
                stop.set()
                await chaos_task
            out["seconds"] = time.perf_counter() - t0
            out["lost"] = len(pending)
            for fut in pending:
                fut.cancel()
            out["rss_end"] = me.memory_info().rss
        runs = _runs(Path(log_dir))
    out["submitted"] = submitted
    out["outcomes"] = dict(outcomes)
    out["examples"] = examples
    out["kills"] = dict(kills)
    out["run_twice"] = sum(1 for token, n in runs.items() if n > 1 and token >= 0)
    return out


def _runs(log_dir: Path) -> collections.Counter[int]:
    """How many times each token began, over every worker's log."""
    return collections.Counter(int(line) for log in log_dir.glob("*.log") for line in log.read_text().split())


async def _chaos(em: Any, per_second: float, kills: collections.Counter[str], stop: asyncio.Event) -> None:
    if per_second <= 0:
        return
    rng = random.Random(16)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=rng.expovariate(per_second))
            return
        except TimeoutError:
            pass
        members = [w for w in em.pool.fleet.members if w.backend.info().pid and not w.backend.is_closed]
        if not members:
            continue
        pid = rng.choice(members).backend.info().pid
        how = signal.SIGSTOP if rng.random() < 0.25 else signal.SIGKILL
        try:
            os.kill(pid, how)
            kills[how.name] += 1
        except ProcessLookupError:
            pass


def report(out: dict[str, Any]) -> str:
    mib = 1 << 20
    lines = [
        f"soak: {out['submitted']:,} calls on {out['workers']} workers in {out['seconds']:.1f} s, "
        f"retries={out['retries']}, chaos {out['chaos_per_s']:g}/s ({dict(out['kills']) or 'none'})",
        f"  succeeded          {out['outcomes'].get('succeeded', 0):>10,}",
    ]
    for name, n in sorted(out["outcomes"].items()):
        if name != "succeeded":
            lines.append(f"  {name:<18} {n:>10,}")
    lines += [
        f"  lost (unresolved)  {out['lost']:>10,}",
        f"  run twice          {out['run_twice']:>10,}",
        f"  kernel RSS         {out['rss_start'] / mib:.0f} MiB at start, {out['rss_end'] / mib:.0f} MiB at end",
    ]
    lines += [f"  e.g. {example}" for example in out["examples"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--chaos", type=float, default=2.0, help="kills and stops a second (0: none)")
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--window", type=int, default=2000, help="calls in flight at once")
    args = parser.parse_args(argv)
    out = asyncio.run(soak(args.calls, args.workers, args.chaos, args.retries, args.window))
    print(report(out))
    ok = out["lost"] == 0 and (args.retries > 0 or out["run_twice"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
