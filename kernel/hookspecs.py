"""Every hook the kernel and its execution manager call, with its contract.

Hooks are synchronous (pluggy has none that are async): they are notifications and
factories. Async work lives on the objects factories return. Implement them with
``kernel.hookimpl`` in a module registered through the ``microkernel.plugins``
entry-point group, or pass the module to ``Kernel(plugins=[...])``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .executor import ExecutorFactory
    from .kernel import Kernel
    from .nodes import NodeTransport

PROJECT = "microkernel"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kernel_executor_types() -> Mapping[str, ExecutorFactory]:  # type: ignore[empty-body]  # a spec has no body
    """Node types this plugin provides, as ``{name: factory}``.

    Every implementation is called; the results are merged into one registry (a name
    given twice is a :class:`~kernel.errors.PluginError`). A factory is called as
    ``factory(worker_id, options)`` and returns an unstarted
    :class:`~kernel.executor.Executor`.
    """


@hookspec
def kernel_node_transports() -> Mapping[str, NodeTransport]:  # type: ignore[empty-body]  # a spec has no body
    """Transports remote nodes connect over, as ``{name: transport}`` (for example
    ``{"websocket": ...}``, serving the ``ws`` and ``wss`` schemes).

    Every implementation is called and the results merged (a name given twice is a
    :class:`~kernel.errors.PluginError`). The execution manager picks one by name
    (``custom.nodes.transport``); ``kernel node --connect URL`` by URL scheme.
    """


@hookspec
def kernel_service_loaded(kernel: Kernel, name: str, service: Any) -> None:
    """A service's class was imported and instantiated (not yet started)."""


@hookspec
def kernel_service_started(kernel: Kernel, name: str, service: Any) -> None:
    """A service's ``start()`` returned."""


@hookspec
def kernel_service_failed(kernel: Kernel, name: str, error: BaseException) -> None:
    """A service failed to import or start, or was skipped because a dependency failed."""


@hookspec
def kernel_service_stopped(kernel: Kernel, name: str) -> None:
    """A service's ``stop()`` returned (or raised; the error is logged)."""


@hookspec
def kernel_started(kernel: Kernel) -> None:
    """Every service that could start has started."""


@hookspec
def kernel_stopping(kernel: Kernel) -> None:
    """The kernel is about to stop its services (in reverse start order)."""


@hookspec
def kernel_event(kernel: Kernel, event: str, payload: Mapping[str, Any]) -> None:
    """An execution-manager event (``worker-started``, ``task-error``...).

    ``payload`` carries the ids and reason. Called on the event loop: return quickly.
    """
