"""``kernel demo``, registered as a plugin (entry point ``microkernel.plugins``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import click

from kernel import hookimpl
from kernel.commands import examples, log_options


@click.command(epilog=examples("kernel demo", "kernel demo --workers 2 --limit 5000000"))
@click.option("--limit", type=click.IntRange(min=2), default=2_000_000, show_default=True,
              help="count primes below this")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 2, show_default="CPUs",
              help="pool size")
@click.option("--parts", type=click.IntRange(min=0), default=0, help="calls to split into (default 8 per worker)")
@click.pass_context
def demo(ctx: click.Context, limit: int, workers: int, parts: int) -> None:
    """Count primes over the worker pool and show the speed-up against one process."""
    import asyncio

    from .demo import run_demo

    log_options(ctx, default_level="warning")
    asyncio.run(run_demo(limit, workers, parts or 8 * workers))


@hookimpl
def kernel_cli_commands() -> Mapping[str, click.Command]:
    return {"demo": demo}
