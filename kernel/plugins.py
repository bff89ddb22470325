"""The kernel's pluggy plugin manager and the node-type registry it fills."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import pluggy

from . import hookspecs
from .errors import PluginError

if TYPE_CHECKING:
    from .executor import ExecutorFactory
    from .nodes import NodeTransport

PLUGIN_GROUP = "microkernel.plugins"


def make_plugin_manager(
    plugins: Iterable[Any] = (), *, entry_points: bool = True
) -> pluggy.PluginManager:
    """A plugin manager with the kernel's hookspecs and the installed plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        if not pm.is_registered(plugin):
            pm.register(plugin)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(PLUGIN_GROUP)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r} is invalid: {exc}") from exc
        except Exception as exc:
            raise PluginError(
                f"loading plugins of entry-point group {PLUGIN_GROUP!r} failed: {exc}"
            ) from exc
    return pm


def _merged(pm: pluggy.PluginManager, hook: str, what: str) -> dict[str, Any]:
    registry: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        result = cast("Mapping[str, Any] | None", impl.function())
        for name, value in (result or {}).items():
            if name in registry:
                raise PluginError(f"{what} {name!r} is provided by both {owners[name]} and {impl.plugin_name}")
            registry[name] = value
            owners[name] = impl.plugin_name
    return registry


def executor_types(pm: pluggy.PluginManager) -> dict[str, ExecutorFactory]:
    """Merge every plugin's ``kernel_executor_types``; a duplicate name is an error."""
    return _merged(pm, "kernel_executor_types", "node type")


def node_transports(pm: pluggy.PluginManager) -> dict[str, NodeTransport]:
    """Merge every plugin's ``kernel_node_transports``; a duplicate name is an error."""
    return _merged(pm, "kernel_node_transports", "node transport")
