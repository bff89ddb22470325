"""The kernel's pluggy plugin manager and the node-type registry it fills."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import pluggy

from . import hookspecs
from .errors import PluginError

if TYPE_CHECKING:
    from .executor import ExecutorFactory

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


def executor_types(pm: pluggy.PluginManager) -> dict[str, ExecutorFactory]:
    """Merge every plugin's ``kernel_executor_types``; a duplicate name is an error."""
    registry: dict[str, ExecutorFactory] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.kernel_executor_types.get_hookimpls():
        result = cast("Mapping[str, ExecutorFactory] | None", impl.function())
        for name, factory in (result or {}).items():
            if name in registry:
                raise PluginError(
                    f"node type {name!r} is provided by both {owners[name]} and "
                    f"{impl.plugin_name}"
                )
            registry[name] = factory
            owners[name] = impl.plugin_name
    return registry
