"""The execution manager's ``kernel`` subcommands: ``status`` and ``node``.

Registered as a plugin (entry point ``microkernel.plugins``); every ``kernel``
invocation imports this module, so what a command needs is imported when it runs.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence

from kernel import hookimpl
from kernel.cli import add_loop_argument, run_loop
from kernel.commands import Command
from kernel.interfaces import EXECUTION_MANAGER, ServiceHost

from .nodes import TOKEN_ENV

DEFAULT_URL = "http://127.0.0.1:8790"


@hookimpl
def kernel_cli_commands() -> Mapping[str, Command]:
    return {
        "status": Command(
            help="show a running kernel's workers, nodes, load and queue",
            description="Ask a running kernel's HTTP API (custom.http) for its status.",
            arguments=_status_arguments, run=_status,
        ),
        "node": Command(
            help="serve a kernel's calls from this machine (dials out to the kernel)",
            description="Run a node agent: it connects to a kernel listening for nodes (custom.nodes of its "
                        "execution manager) and runs calls in local worker processes. The token comes from "
                        f"${TOKEN_ENV} or --token-file.",
            arguments=_node_arguments, run=_node,
        ),
    }


@hookimpl
def kernel_cli_serving(kernel: ServiceHost) -> Sequence[str] | None:
    em = kernel.find_service(EXECUTION_MANAGER)  # None when a service of the user's replaced it
    lines = []
    address = getattr(em, "nodes_address", None)
    if address and address.startswith(("ws://", "wss://")):
        lines.append(f"nodes connect with: kernel node --connect {address}")
    dashboard = getattr(em, "http_address", None)
    if dashboard:
        lines.append(f"dashboard: {dashboard}/ (kernel status --url {dashboard})")
    return lines


def _status_arguments(status: argparse.ArgumentParser) -> None:
    status.add_argument("--url", default=DEFAULT_URL, help=f"the kernel's dashboard address (default {DEFAULT_URL})")
    status.add_argument("--json", action="store_true", help="print the raw status document (for scripts)")
    status.add_argument("--watch", nargs="?", type=float, const=1.0, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 1) until Ctrl-C")


def _status(args: argparse.Namespace) -> int:
    from .terminal import show_status

    return show_status(args.url, as_json=args.json, watch=args.watch)


def _node_arguments(node: argparse.ArgumentParser) -> None:
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
    add_loop_argument(node)
    node.add_argument("--drain-timeout", type=float, default=60.0, metavar="SECONDS",
                      help="on SIGTERM, how long running calls get before the node stops anyway (default 60)")
    node.add_argument("--worker-timeout", type=float, default=5.0, metavar="SECONDS",
                      help="a worker process stopped (SIGSTOP), or idle and not answering, this long is "
                           "killed and replaced; its calls fail or retry as they allow (default 5)")


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

    from kernel.plugins import make_plugin_manager

    from .hookspecs import node_transports
    from .nodes import NodeConfig, read_token

    if args.token is not None:
        raise ValueError(f"the token is never taken on the command line (ps would show it): "
                         f"set ${TOKEN_ENV} or use --token-file")
    if args.slots < 1:
        raise ValueError(f"--slots must be at least 1, got {args.slots}")
    if not args.worker_timeout > 0:
        raise ValueError(f"--worker-timeout must be a number of seconds above 0, got {args.worker_timeout}")
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
        reconnect_max=args.reconnect_max, drain_timeout=args.drain_timeout, worker_timeout=args.worker_timeout,
    )
    return run_loop(transport.run_node(config), args.loop)
