"""The ``kernel`` command: ``kernel run`` here, and the subcommands plugins add
(``kernel_cli_commands``: the execution manager's ``status`` and ``node``, the
examples' ``demo``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import logs
from .commands import Command
from .errors import KernelError, PluginError
from .kernel import Kernel
from .plugins import make_plugin_manager, merged_registry

_T = TypeVar("_T")
_LOOP_HELP = "event loop: uvloop when installed (auto; pip install 'microkernel-em[fast]'), or asyncio's own"
OWN_COMMANDS = ("run",)


def add_loop_argument(parser: argparse.ArgumentParser) -> None:
    """``--loop auto|asyncio|uvloop``, for commands that run an event loop (:func:`run_loop`)."""
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto", help=_LOOP_HELP)


def plugin_commands(plugins: Sequence[object] = ()) -> dict[str, Command]:
    """Every installed plugin's subcommands (and those of ``plugins``); one named like
    another's, or like the kernel's own, is a :class:`PluginError`."""
    commands: dict[str, Command] = merged_registry(make_plugin_manager(plugins), "kernel_cli_commands", "command")
    taken = sorted(set(commands) & set(OWN_COMMANDS))
    if taken:
        raise PluginError(f"plugins may not replace the kernel's own command(s) {taken}")
    return commands


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
    defaults: dict[str, dict[str, Any]] = {}
    if not args.no_http:
        defaults["execution-manager"] = {"http": {}}
    if not (args.no_http or args.no_jobs):
        defaults["jobs"] = {"api": {}}
    kernel = Kernel(args.paths, settings=_settings(args.set), defaults=defaults)

    async def ready(k: Kernel) -> None:
        states = ", ".join(f"{n} ({s.value})" for n, s in k.service_states().items())
        print(f"kernel running: {states}. Ctrl-C or SIGTERM stops it.", file=sys.stderr)
        for lines in k.hook.kernel_cli_serving(kernel=k):
            for line in lines or ():
                print(line, file=sys.stderr)

    await kernel.serve(ready)


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
    try:
        commands = plugin_commands()
    except KernelError as exc:
        print(f"kernel: error: {exc}", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(prog="kernel", description="Run a kernel and its services; the other "
                                     "commands come from the installed plugins.")
    parser.add_argument("--log-level", help=f"debug, info, warning, error (or ${logs.LEVEL_ENV})")
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the services found in PATHS until Ctrl-C or SIGTERM")
    run.add_argument("paths", nargs="+", type=Path, help="service folders or folders of them")
    run.add_argument("--set", action="append", default=[], metavar="SERVICE.FIELD=VALUE",
                     help="override a service's custom setting (value parsed as JSON)")
    run.add_argument("--no-http", action="store_true",
                     help="no dashboard, JSON API or /metrics (else on, as custom.http of the execution manager), "
                          "and no job API")
    run.add_argument("--no-jobs", action="store_true",
                     help="no job API (else on, as custom.api of the jobs service: kernel submit reaches it)")
    add_loop_argument(run)
    for name, command in commands.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.description or command.help))

    args = parser.parse_args(argv)
    chosen = commands.get(args.command)
    try:
        logs.configure(args.log_level or (chosen.log_level if chosen else None), json=args.log_json)
        if chosen is None:
            run_loop(_run(args), args.loop)
            return 0
        return chosen.run(args) or 0
    except KernelError as exc:
        print(f"kernel: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"kernel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
