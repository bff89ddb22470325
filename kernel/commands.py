"""What a plugin's ``kernel`` subcommand is made of: a :class:`click.Command`, and the
options and habits every verb shares, written once here.

A plugin returns its commands from the ``kernel_cli_commands`` hook
(:mod:`kernel.hookspecs`)::

    @click.command(epilog=examples("kernel greet --name Ada"))
    @click.option("--name", required=True, help="who to greet")
    @json_option
    def greet(name: str, as_json: bool) -> None:
        "Say hello."
        ...

    @hookimpl
    def kernel_cli_commands() -> Mapping[str, click.Command]:
        return {"greet": greet}

Errors a command raises are printed as one line by the ``kernel`` frame (never a
traceback): a :class:`~kernel.errors.KernelError` exits with 1, a ``ValueError``, a
:class:`~kernel.errors.UsageError` or a :class:`click.UsageError` (bad input) with 2;
:class:`CommandFailed` (1) and :class:`RequestRefused` (2) name the verb. What a
command needs beyond Click is imported inside it: every ``kernel`` invocation
(``kernel --help`` too) imports every plugin's command module.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


class CommandFailed(click.ClickException):
    """A verb could not do its work (nothing answers, the far side failed): printed as
    ``kernel VERB: error: MESSAGE``, exit code 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        ctx = click.get_current_context(silent=True)
        self.command_path = ctx.command_path if ctx is not None else "kernel"


class RequestRefused(CommandFailed):
    """What the verb asked for was refused as wrong (a bad job, an unknown id, a wrong
    token): exit code 2, as for a bad flag."""

    exit_code = 2


def examples(*lines: str) -> str:
    """A command's ``epilog``: its examples, kept as written (Click rewraps other text)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def json_option(f: _F) -> _F:
    """``--json``: print a JSON document instead of text (for scripts); the parameter is
    ``as_json``. Every verb that reads something has it."""
    return click.option("--json", "as_json", is_flag=True, help="print JSON (for scripts)")(f)


def loop_option(f: _F) -> _F:
    """``--loop auto|asyncio|uvloop`` for verbs that run an event loop (:func:`run_loop`)."""
    return click.option(
        "--loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto", show_default=True,
        help="event loop: uvloop when installed (pip install 'microkernel-em[fast]'), or asyncio's own",
    )(f)


def run_loop(coro: Coroutine[Any, Any, _T], loop: str = "auto") -> _T:
    """Run ``coro`` on uvloop (``auto``: when installed) or asyncio's loop.

    :raises ValueError: ``uvloop`` asked for and not installed.
    """
    import asyncio

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


def log_options(ctx: click.Context, default_level: str | None = None) -> None:
    """Configure the process's logs for this command: ``kernel --log-level`` or
    ``$KERNEL_LOG_LEVEL`` when given, else ``default_level`` (a quiet verb such as
    ``demo`` passes ``"warning"``), else ``info``. The frame does it for every verb;
    call it again with a default of your own."""
    from . import logs

    options = ctx.find_root().params
    explicit = options.get("log_level") or ctx.find_root().meta.get("kernel.env_log_level")
    logs.configure(explicit or default_level, json=options.get("log_json"))
