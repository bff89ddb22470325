"""What a plugin gives to add a subcommand to the ``kernel`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Command:
    """A ``kernel`` subcommand (returned by the ``kernel_cli_commands`` hook).

    ``run`` gets the parsed arguments and returns the exit code (None for 0). A
    :class:`~kernel.errors.KernelError` it raises is printed as ``kernel: error: ...``
    with exit code 1, a ``ValueError`` (bad input) the same with exit code 2; never a
    traceback.
    """

    help: str
    run: Callable[[argparse.Namespace], int | None]
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    description: str | None = None
    log_level: str | None = None  # this command's default log level (else the kernel's)
