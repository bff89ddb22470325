"""``kernel demo``, registered as a plugin (entry point ``microkernel.plugins``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from kernel import hookimpl
from kernel.commands import Command


@hookimpl
def kernel_cli_commands() -> Mapping[str, Command]:
    return {"demo": Command(help="count primes over the worker pool and show the speed-up",
                            arguments=_arguments, run=_run, log_level="warning")}


def _arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--limit", type=int, default=2_000_000, help="count primes below this")
    demo.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pool size")
    demo.add_argument("--parts", type=int, default=0, help="calls to split into (default 8/worker)")


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from .demo import run_demo

    asyncio.run(run_demo(args.limit, args.workers, args.parts or 8 * args.workers))
    return 0
