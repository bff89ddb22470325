"""The ``kernel`` command: run a kernel, a node agent, or the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import logs
from .errors import KernelError
from .kernel import Kernel
from .nodes import TOKEN_ENV
from .status import DEFAULT_URL, show_status

_T = TypeVar("_T")
_LOOP_HELP = "event loop: uvloop when installed (auto; pip install 'microkernel-em[fast]'), or asyncio's own"


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
    defaults: dict[str, dict[str, Any]] = {} if args.no_http else {"execution-manager": {"http": {}}}
    kernel = Kernel(args.paths, settings=_settings(args.set), defaults=defaults)

    async def ready(k: Kernel) -> None:
        states = ", ".join(f"{n} ({s.value})" for n, s in k.service_states().items())
        print(f"kernel running: {states}. Ctrl-C or SIGTERM stops it.", file=sys.stderr)
        try:
            em = k.get_service("execution-manager")
        except KernelError:  # replaced by a service of the user's, or not visible
            em = None
        address = getattr(em, "nodes_address", None)
        if address and address.startswith(("ws://", "wss://")):
            print(f"nodes connect with: kernel node --connect {address}", file=sys.stderr)
        dashboard = getattr(em, "http_address", None)
        if dashboard:
            print(f"dashboard: {dashboard}/ (kernel status --url {dashboard})", file=sys.stderr)

    await kernel.serve(ready)


def _labels(pairs: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, amount = pair.partition("=")
        try:
            out[name.strip()] = float(amount) if sep else 1.0
        except ValueError:
            raise ValueError(f"--label takes NAME=AMOUNT with a number, got {pair!r}") from None
        if not name.strip() or out[name.strip()] < 0:
            raise ValueError(f"--label takes NAME=AMOUNT with a name and an amount >= 0, got {pair!r}")
    return out


def _node(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from .nodes import NodeConfig, read_token
    from .plugins import make_plugin_manager, node_transports

    if args.token is not None:
        raise ValueError(f"the token is never taken on the command line (ps would show it): "
                         f"set ${TOKEN_ENV} or use --token-file")
    if args.slots < 1:
        raise ValueError(f"--slots must be at least 1, got {args.slots}")
    url = urlsplit(args.connect)
    if url.username or url.password or url.query:
        raise ValueError("--connect takes ws://HOST:PORT (a token never goes in a URL)")
    transports = node_transports(make_plugin_manager())
    transport = next((t for t in transports.values() if url.scheme in t.schemes), None)
    if transport is None or not url.hostname:
        schemes = sorted(s for t in transports.values() for s in t.schemes)
        raise ValueError(f"--connect {args.connect!r}: expected SCHEME://HOST:PORT with a scheme among {schemes}")
    config = NodeConfig(
        url=args.connect, token=read_token(file=args.token_file), node_id=args.node_id, slots=args.slots,
        labels=_labels(args.label), node_type=args.node_type, ca_file=args.ca_file,
        reconnect_max=args.reconnect_max, drain_timeout=args.drain_timeout,
    )
    return run_loop(transport.run_node(config), args.loop)


def run_loop(coro: Coroutine[Any, Any, _T], loop: str) -> _T:
    """Run ``coro`` on uvloop (``auto``: when installed) or asyncio's loop."""
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                coro.close()
                raise ValueError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            result: _T = uvloop.run(coro)
            return result
    return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kernel", description=__doc__)
    parser.add_argument("--log-level", help=f"debug, info, warning, error (or ${logs.LEVEL_ENV})")
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the services found in PATHS until Ctrl-C or SIGTERM")
    run.add_argument("paths", nargs="+", type=Path, help="service folders or folders of them")
    run.add_argument("--set", action="append", default=[], metavar="SERVICE.FIELD=VALUE",
                     help="override a service's custom setting (value parsed as JSON)")
    run.add_argument("--no-http", action="store_true",
                     help="no dashboard, JSON API or /metrics (else on, as custom.http of the execution manager)")
    run.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto", help=_LOOP_HELP)

    status = sub.add_parser("status", help="show a running kernel's workers, nodes, load and queue",
                            description="Ask a running kernel's HTTP API (custom.http) for its status.")
    status.add_argument("--url", default=DEFAULT_URL, help=f"the kernel's dashboard address (default {DEFAULT_URL})")
    status.add_argument("--json", action="store_true", help="print the raw status document (for scripts)")
    status.add_argument("--watch", nargs="?", type=float, const=1.0, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 1) until Ctrl-C")

    node = sub.add_parser("node", help="serve a kernel's calls from this machine (dials out to the kernel)",
                          description="Run a node agent: it connects to a kernel listening for nodes "
                                      "(custom.nodes of its execution manager) and runs calls in local "
                                      f"worker processes. The token comes from ${TOKEN_ENV} or --token-file.")
    node.add_argument("--connect", required=True, metavar="URL", help="the kernel: ws://HOST:PORT or wss://HOST:PORT")
    node.add_argument("--token-file", metavar="FILE", help=f"file holding the shared token (else ${TOKEN_ENV})")
    node.add_argument("--token", help=argparse.SUPPRESS)
    node.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    node.add_argument("--label", action="append", default=[], metavar="NAME=AMOUNT",
                      help="a resource this node offers calls, e.g. gpu=1 (repeatable)")
    node.add_argument("--node-id", default=socket.gethostname(), help="unique name (default: the host name)")
    node.add_argument("--ca-file", metavar="FILE", help="CA certificate to trust for wss:// (default: the system's)")
    node.add_argument("--node-type", default="local", help="executor that runs the calls (default: local)")
    node.add_argument("--reconnect-max", type=float, default=30.0, metavar="SECONDS",
                      help="longest wait between reconnection attempts (default 30)")
    node.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto", help=_LOOP_HELP)
    node.add_argument("--drain-timeout", type=float, default=60.0, metavar="SECONDS",
                      help="on SIGTERM, how long running calls get before the node stops anyway (default 60)")

    demo = sub.add_parser("demo", help="count primes over the worker pool and show the speed-up")
    demo.add_argument("--limit", type=int, default=2_000_000, help="count primes below this")
    demo.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pool size")
    demo.add_argument("--parts", type=int, default=0, help="calls to split into (default 8/worker)")

    args = parser.parse_args(argv)
    try:
        default_level = "warning" if args.command == "demo" else None
        logs.configure(args.log_level or default_level, json=args.log_json)
        if args.command == "run":
            run_loop(_run(args), args.loop)
        elif args.command == "node":
            return _node(args)
        elif args.command == "status":
            return show_status(args.url, as_json=args.json, watch=args.watch)
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
