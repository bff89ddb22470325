"""Every hook the kernel calls, with its contract.

Hooks are synchronous (pluggy has none that are async): they are notifications and
factories. Async work lives on the objects factories return. Implement them with
``kernel.hookimpl`` in a module registered through the ``microkernel.plugins``
entry-point group, or pass the module to ``Kernel(plugins=[...])``. A service that
hosts hooks of its own keeps their specs beside it (the execution manager's node
types: ``microkernel.services.execution_manager.hookspecs``) and adds them with
``kernel.plugins.add_hookspecs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .interfaces import ServiceHost

PROJECT = "microkernel"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kernel_cli_commands() -> Mapping[str, click.Command]:  # type: ignore[empty-body]  # a spec has no body
    """Verbs this plugin adds to the ``kernel`` command, as ``{name: click.Command}``.

    Every implementation is called and the results merged: a name given twice, one of
    the kernel's own (``run``, ``completion``), or a value that is not a
    :class:`click.Command` is a :class:`~kernel.errors.PluginError`. Shared options and
    habits (``--json``, ``--loop``, examples in the help, how errors are printed) are in
    :mod:`kernel.commands`. Every ``kernel`` invocation, ``kernel --help`` included,
    calls this hook: import what a verb needs inside its function, not at the top of
    the module (``kernel --help`` stays under a few hundred milliseconds).
    """


@hookspec
def kernel_cli_serving(kernel: ServiceHost) -> Sequence[str] | None:
    """Lines ``kernel run`` prints once every service has started: where to reach what
    this plugin's services serve (a dashboard, the address nodes connect to)."""


@hookspec
def kernel_service_loaded(kernel: ServiceHost, name: str, service: Any) -> None:
    """A service's class was imported and instantiated (not yet started)."""


@hookspec
def kernel_service_started(kernel: ServiceHost, name: str, service: Any) -> None:
    """A service's ``start()`` returned."""


@hookspec
def kernel_service_failed(kernel: ServiceHost, name: str, error: BaseException) -> None:
    """A service failed to import or start, or was skipped because a dependency failed."""


@hookspec
def kernel_service_stopped(kernel: ServiceHost, name: str) -> None:
    """A service's ``stop()`` returned (or raised; the error is logged)."""


@hookspec
def kernel_started(kernel: ServiceHost) -> None:
    """Every service that could start has started."""


@hookspec
def kernel_stopping(kernel: ServiceHost) -> None:
    """The kernel is about to stop its services (in reverse start order)."""


@hookspec
def kernel_event(kernel: ServiceHost, event: str, payload: Mapping[str, Any]) -> None:
    """An execution-manager event (``worker-started``, ``attempt-failed``...).

    ``payload`` carries the ids and reason. Called on the event loop: return quickly.
    """
