"""The execution manager's ``kernel`` verbs: ``status``, ``workers``, ``worker``, ``revoke``
and ``node``.

Registered as a plugin (entry point ``microkernel.plugins``); every ``kernel``
invocation imports this module, so what a command needs is imported when it runs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import click

from kernel import hookimpl
from kernel.commands import examples, json_option, loop_option, run_loop

if TYPE_CHECKING:  # kernel.interfaces imports asyncio, which `kernel --help` does without
    from kernel.interfaces import ServiceHost

DEFAULT_URL = "http://127.0.0.1:8790"
TOKEN_ENV = "MICROKERNEL_NODE_TOKEN"  # nodes.TOKEN_ENV, kept here so `kernel --help` imports no executor


@click.command(epilog=examples("kernel status", "kernel status --watch", "kernel status --json | jq .pool",
                               "kernel status --url http://10.0.0.5:8790"))
@click.option("--url", default=DEFAULT_URL, show_default=True, help="the kernel's dashboard address")
@json_option
@click.option("--watch", type=float, is_flag=False, flag_value=1.0, default=None, metavar="SECONDS",
              help="redraw every SECONDS (default 1) until Ctrl-C")
def status(url: str, as_json: bool, watch: float | None) -> int:
    """Show a running kernel's workers, nodes, load and queue (from its HTTP API,
    custom.http of the execution manager)."""
    from .monitoring import show_status

    return show_status(url, as_json=as_json, watch=watch)


@click.command(epilog=examples("kernel workers", "kernel workers --json | jq '.[].id'"))
@click.option("--url", default=DEFAULT_URL, show_default=True, help="the kernel's dashboard address")
@json_option
def workers(url: str, as_json: bool) -> int:
    """List a running kernel's workers: id, kind, pid, state, what each runs, counts,
    CPU and memory (from its HTTP API)."""
    from .monitoring.operate import show_workers

    return show_workers(url, as_json=as_json)


@click.command(epilog=examples("kernel worker local-1", "kernel worker local-1 --restart",
                               "kernel worker local-2 --drain", "kernel worker local-1 --json",
                               """kernel worker local-1 --message '{"reload": true}'""",
                               """kernel worker '*' --message '{"ping": 1}' --timeout 2"""))
@click.argument("worker_id")
@click.option("--drain", "action", flag_value="drain",
              help="no new calls; its pinned instances move; it finishes, then stops")
@click.option("--stop", "action", flag_value="stop", help="stop it now: its call fails (or retries) naming the stop")
@click.option("--restart", "action", flag_value="restart",
              help="drain it, then a new process under the same id (a node's slot: its node replaces it)")
@click.option("--message", metavar="JSON", help="send JSON to its pinned instances' on_message ('*': every worker)")
@click.option("--timeout", type=click.FloatRange(min=0, max=300, min_open=True), default=5.0, show_default=True,
              metavar="SECONDS", help="how long --message waits for each worker's answer")
@click.option("--url", default=DEFAULT_URL, show_default=True, help="the kernel's dashboard address")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="file holding the admin token (else $MICROKERNEL_ADMIN_TOKEN, else the kernel's admin.token)")
@json_option
def worker(worker_id: str, action: str | None, message: str | None, timeout: float, url: str, token_file: str | None,
           as_json: bool) -> int:
    """Show one worker of a running kernel (state, pid, node, what it runs and how far,
    counts, CPU, memory, restarts, last exit), or drain, stop or restart it (actions
    need the admin token, which a kernel on this machine keeps in its data folder)."""
    from .monitoring.operate import operate_worker

    if message is not None and action is not None:
        raise click.UsageError(f"--message and --{action} are two requests: give one")
    return operate_worker(url, worker_id, action, as_json=as_json, token_file=token_file, message=message,
                          timeout=timeout)


@click.command(epilog=examples("kernel revoke 1234", "kernel revoke 1234 --url http://10.0.0.5:8790"))
@click.argument("task_id", type=click.IntRange(min=1))
@click.option("--url", default=DEFAULT_URL, show_default=True, help="the kernel's dashboard address")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="file holding the admin token (else $MICROKERNEL_ADMIN_TOKEN, else the kernel's admin.token)")
@json_option
def revoke(task_id: int, url: str, token_file: str | None, as_json: bool) -> int:
    """Revoke a call by its task id (shown in errors, logs and the dashboard): waiting,
    it never runs; running, it is stopped and its worker replaced; it is never retried,
    and a job whose call it is ends cancelled."""
    from .monitoring.operate import revoke_call

    return revoke_call(url, task_id, as_json=as_json, token_file=token_file)


@click.command(epilog=examples(
    f"{TOKEN_ENV}=... kernel node --connect ws://kernel-host:8765",
    "kernel node --connect wss://kernel-host:8765 --token-file /etc/kernel/token --ca-file ca.pem",
    "kernel node --connect ws://kernel-host:8765 --slots 8 --label gpu=1"))
@click.option("--connect", required=True, metavar="URL", help="the kernel: ws://HOST:PORT or wss://HOST:PORT")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help=f"file holding the shared token (else ${TOKEN_ENV})")
@click.option("--token", hidden=True)
@click.option("--slots", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="CPUs",
              help="worker processes")
@click.option("--label", "labels", multiple=True, metavar="NAME=AMOUNT",
              help="a resource this node offers calls, e.g. gpu=1 (repeatable)")
@click.option("--node-id", default=socket.gethostname(), show_default="the host name", help="unique name")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="CA certificate to trust for wss:// (default: the system's)")
@click.option("--node-type", default="local", show_default=True, help="executor that runs the calls")
@click.option("--reconnect-max", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="SECONDS",
              help="longest wait between reconnection attempts")
@loop_option
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=60.0, show_default=True, metavar="SECONDS",
              help="on SIGTERM, how long running calls get before the node stops anyway")
@click.option("--worker-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="SECONDS", help="a worker process stopped (SIGSTOP), or idle and not answering, this long is "
                                      "killed and replaced; its calls fail or retry as they allow")
def node(connect: str, token_file: str | None, token: str | None, slots: int, labels: tuple[str, ...],
         node_id: str, ca_file: str | None, node_type: str, reconnect_max: float, loop: str, drain_timeout: float,
         worker_timeout: float) -> int:
    """Serve a kernel's calls from this machine: the node dials out to a kernel that
    listens for nodes (custom.nodes of its execution manager) and runs calls in local
    worker processes. The folder it starts in is on its workers' import path."""
    from pathlib import Path
    from urllib.parse import urlsplit

    from kernel.plugins import make_plugin_manager
    from kernel.running import add_app_folder

    from .executors import NodeConfig, read_token
    from .hookspecs import node_transports

    if token is not None:
        raise click.UsageError(f"the token is never taken on the command line (ps would show it): "
                               f"set ${TOKEN_ENV} or use --token-file")
    url = urlsplit(connect)
    if url.username or url.password or url.query:
        raise click.BadParameter("takes ws://HOST:PORT (a token never goes in a URL)", param_hint="--connect")
    transports = node_transports(make_plugin_manager())
    transport = next((t for t in transports.values() if url.scheme in t.schemes), None)
    if transport is None or not url.hostname:
        schemes = sorted(s for t in transports.values() for s in t.schemes)
        raise click.BadParameter(f"{connect!r}: expected SCHEME://HOST:PORT with a scheme among {schemes}",
                                 param_hint="--connect")
    add_app_folder(Path.cwd())
    config = NodeConfig(
        url=connect, token=read_token(file=token_file), node_id=node_id, slots=slots,
        labels=_labels(labels), node_type=node_type, ca_file=ca_file,
        reconnect_max=reconnect_max, drain_timeout=drain_timeout, worker_timeout=worker_timeout,
    )
    return run_loop(transport.run_node(config), loop)


@hookimpl
def kernel_cli_commands() -> Mapping[str, click.Command]:
    return {"status": status, "workers": workers, "worker": worker, "revoke": revoke, "node": node}


@hookimpl
def kernel_cli_serving(kernel: ServiceHost) -> Sequence[str] | None:
    from kernel.interfaces import EXECUTION_MANAGER

    em = kernel.find_service(EXECUTION_MANAGER)  # None when a service of the user's replaced it
    lines = []
    address = getattr(em, "nodes_address", None)
    if address and address.startswith(("ws://", "wss://")):
        lines.append(f"nodes connect with: kernel node --connect {address}")
    dashboard = getattr(em, "http_address", None)
    if dashboard:
        lines.append(f"dashboard: {dashboard}/ (kernel status --url {dashboard})")
    return lines


def _labels(pairs: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, amount = pair.partition("=")
        try:
            out[name.strip()] = float(amount) if sep else 1.0
        except ValueError:
            raise click.BadParameter(f"{pair!r}: expected NAME=AMOUNT with a number", param_hint="--label") from None
        if not name.strip() or out[name.strip()] < 0:
            raise click.BadParameter(f"{pair!r}: expected NAME=AMOUNT with a name and an amount >= 0",
                                     param_hint="--label")
    return out
