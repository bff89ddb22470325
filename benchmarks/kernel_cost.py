"""What one call costs the kernel itself, apart from workers, transit and the machine's noise.

    python -m benchmarks.kernel_cost [--rounds 3] [--calls 5000]
    valgrind --tool=callgrind python -m benchmarks.kernel_cost --rounds 1   # then --rounds 3

Local workers start as usual, but their executor answers each call in the kernel's own
process (the next turn of the event loop) instead of sending it: what is left is the
kernel's path, from ``submit`` through the scheduler, the executor seam and the reply
to the caller's future. Each round gathers ``--calls`` calls, then awaits a fifth as
many one by one. It prints the kernel's CPU time per call (best and median round).

Timings on a shared machine vary by half; instruction counts do not. Under callgrind,
run it with ``--rounds 1`` and ``--rounds 3`` and divide the difference of the two
"Collected" counts by twice the calls of a round: instructions per call, to about 2%.
A profiling tool, not a comparison with peers (``benchmarks.run`` does that).
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import statistics
import time
from typing import Any

from kernel import Kernel, logs
from microkernel.plugins.local.worker import LocalWorker
from microkernel.services.execution_manager.executors import Attempt
from microkernel.services.execution_manager.wire import protocol as p

from .tasks import inc

_ANSWER = pickle.dumps(2)


def _answer_here(self: LocalWorker, call: Attempt) -> None:
    """LocalWorker.submit, answering in this process a turn later (what a worker would)."""
    self._hold(call)
    waiting: list[int] = self.__dict__.setdefault("_here", [])
    if not waiting:
        asyncio.get_running_loop().call_soon(_reply_all, self)
    waiting.append(call.id)


def _reply_all(self: LocalWorker) -> None:
    waiting, self.__dict__["_here"] = self.__dict__["_here"], []
    for call_id in waiting:
        self._on_event(p.Result(call_id, _ANSWER, 1e-6))


async def measure(rounds: int, calls: int) -> list[float]:
    logs.configure("warning")
    settings: dict[str, Any] = {"minWorkers": 2, "maxWorkers": 2, "inProcess": False, "heartbeatTimeout": 3600}
    async with Kernel([], settings={"execution-manager": settings}) as kernel:
        em = kernel.get_service("execution-manager")
        LocalWorker.submit = _answer_here  # type: ignore[method-assign]  # the point of the tool
        for _ in range(300):
            await em.submit(inc, 1)
        per_call = []
        for _ in range(rounds):
            t = time.process_time()
            await asyncio.gather(*(em.submit(inc, i) for i in range(calls)))
            for i in range(calls // 5):
                await em.submit(inc, i)
            per_call.append((time.process_time() - t) / (calls + calls // 5))
        return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    per_call = asyncio.run(measure(args.rounds, args.calls))
    print(f"kernel CPU per call: best {min(per_call) * 1e6:.1f} µs, median {statistics.median(per_call) * 1e6:.1f} µs"
          f" ({args.rounds} rounds of {args.calls} gathered + {args.calls // 5} sequential)")


if __name__ == "__main__":
    main()
