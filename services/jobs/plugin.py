"""The job service's built-ins as a plugin (entry point ``microkernel.plugins``): its
task types and its ``kernel`` subcommands. Every ``kernel`` invocation imports this
module, so what a command needs is imported when it runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from kernel import hookimpl

if TYPE_CHECKING:
    import click

    from kernel.interfaces import ServiceHost

    from .tasks import TaskType


@hookimpl
def jobs_task_types() -> Mapping[str, TaskType]:
    from .tasks import BUILTIN

    return {kind.name: kind() for kind in BUILTIN}


@hookimpl
def kernel_cli_commands() -> Mapping[str, click.Command]:
    from .commands import COMMANDS

    return COMMANDS


@hookimpl
def kernel_cli_serving(kernel: ServiceHost) -> Sequence[str] | None:
    from .commands import DEFAULT_URL

    jobs = kernel.find_service("jobs")
    address = getattr(jobs, "address", None)
    api = getattr(jobs, "api", None)
    if not address or api is None:
        return None
    where = "" if address == DEFAULT_URL else f" --api {address}"
    return [f"jobs: {address}/ (token: {api.token_source}); try kernel submit{where} --function math:factorial "
            "--arg 20 --wait"]
