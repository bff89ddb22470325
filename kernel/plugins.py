"""The kernel's pluggy plugin manager, and registries merged from factory hooks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any, cast

import pluggy

from . import hookspecs
from .errors import PluginError

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


def add_hookspecs(pm: pluggy.PluginManager, module: ModuleType) -> None:
    """Add a host's hookspecs (a service's own) to ``pm`` unless they are there; the
    plugins registered before are checked against them then."""
    for name in vars(module):
        caller = vars(pm.hook).get(name)
        if caller is not None and caller.spec is not None and caller.spec.namespace is module:
            return
    try:
        pm.add_hookspecs(module)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} is invalid: {exc}") from exc


def merged_registry(pm: pluggy.PluginManager, hook: str, what: str) -> dict[str, Any]:
    """Merge every implementation's ``{name: value}`` result of a factory hook; a name
    given by two plugins is a :class:`PluginError` naming both."""
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


def registered(registry: Mapping[str, Any], name: str, where: str, what: str) -> Any:
    """``registry[name]``; else a :class:`PluginError` naming ``where`` it was asked
    (``custom.nodeType``), ``what`` it is (``node type``) and the names known."""
    found = registry.get(name)
    if found is None:
        known = ", ".join(sorted(registry)) or "none"
        raise PluginError(f"{where} {name!r} is not a known {what} (known: {known})")
    return found
