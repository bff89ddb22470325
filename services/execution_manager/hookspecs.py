"""The execution manager's hooks: the node types and node transports plugins provide.

Like the kernel's (:mod:`kernel.hookspecs`), they are synchronous factories; implement
them with ``kernel.hookimpl`` in a module of the ``microkernel.plugins`` entry-point
group. :func:`executor_types` and :func:`node_transports` add these specs to the
kernel's plugin manager on first use and merge every plugin's answer.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pluggy

from kernel.hookspecs import PROJECT
from kernel.plugins import add_hookspecs, merged_registry

if TYPE_CHECKING:
    from .executors import NodeTransport, WorkerFactory

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def em_executor_types() -> Mapping[str, WorkerFactory]:  # type: ignore[empty-body]  # a spec has no body
    """Node types this plugin provides, as ``{name: worker class}``.

    Every implementation is called; the results are merged into one registry (a name
    given twice is a :class:`~kernel.errors.PluginError`). Each value is a subclass of
    :class:`~microkernel.services.execution_manager.executors.Worker`: the pool asks its
    class methods (``offers``) before any worker exists, then makes each worker as
    ``cls(worker_id, options)`` (unstarted). Optional capabilities are methods of the
    interface with defaults, so a plugin overrides what it has and nothing is probed.
    """


@hookspec
def em_node_transports() -> Mapping[str, NodeTransport]:  # type: ignore[empty-body]  # a spec has no body
    """Transports remote nodes connect over, as ``{name: transport}`` (for example
    ``{"websocket": ...}``, serving the ``ws`` and ``wss`` schemes).

    Every implementation is called and the results merged (a name given twice is a
    :class:`~kernel.errors.PluginError`). The execution manager picks one by name
    (``custom.nodes.transport``); ``kernel node --connect URL`` by URL scheme.
    """


def executor_types(pm: pluggy.PluginManager) -> dict[str, WorkerFactory]:
    """Every plugin's node types, merged; a duplicate name is a PluginError."""
    add_hookspecs(pm, sys.modules[__name__])
    return merged_registry(pm, "em_executor_types", "node type")


def node_transports(pm: pluggy.PluginManager) -> dict[str, NodeTransport]:
    """Every plugin's node transports, merged; a duplicate name is a PluginError."""
    add_hookspecs(pm, sys.modules[__name__])
    return merged_registry(pm, "em_node_transports", "node transport")
