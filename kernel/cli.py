"""The ``kernel`` command: run a kernel, or the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import logs
from .errors import KernelError
from .kernel import Kernel


def _settings(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set execution-manager.maxWorkers=4`` -> ``{"execution-manager": {"maxWorkers": 4}}``."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        service, dot, field = key.rpartition(".")
        if not sep or not dot or not service or not field:
            raise ValueError(f"--set takes SERVICE.FIELD=VALUE, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(service, {})[field] = value
    return out


async def _run(args: argparse.Namespace) -> None:
    kernel = Kernel(args.paths, settings=_settings(args.set))

    async def ready(k: Kernel) -> None:
        states = ", ".join(f"{n} ({s.value})" for n, s in k.service_states().items())
        print(f"kernel running: {states}. Ctrl-C or SIGTERM stops it.", file=sys.stderr)

    await kernel.serve(ready)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kernel", description=__doc__)
    parser.add_argument("--log-level", help=f"debug, info, warning, error (or ${logs.LEVEL_ENV})")
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the services found in PATHS until Ctrl-C or SIGTERM")
    run.add_argument("paths", nargs="+", type=Path, help="service folders or folders of them")
    run.add_argument("--set", action="append", default=[], metavar="SERVICE.FIELD=VALUE",
                     help="override a service's custom setting (value parsed as JSON)")

    demo = sub.add_parser("demo", help="count primes over the worker pool and show the speed-up")
    demo.add_argument("--limit", type=int, default=2_000_000, help="count primes below this")
    demo.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pool size")
    demo.add_argument("--parts", type=int, default=0, help="calls to split into (default 8/worker)")

    args = parser.parse_args(argv)
    try:
        default_level = "warning" if args.command == "demo" else None
        logs.configure(args.log_level or default_level, json=args.log_json)
        if args.command == "run":
            asyncio.run(_run(args))
        else:
            from .demo import run_demo

            asyncio.run(run_demo(args.limit, args.workers, args.parts or 8 * args.workers))
    except KernelError as exc:
        print(f"kernel: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"kernel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
