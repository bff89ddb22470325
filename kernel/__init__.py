"""A plugin-based microkernel for Python services.

The kernel discovers, validates, orders, starts and stops services (folders with a
``config.json``) and hands them out by name. The execution manager that runs heavy work
on a pool ships beside it as a service (``microkernel.services.execution_manager``);
this package imports nothing of it. Public names are loaded on first use, so worker
processes that only need ``kernel.task`` start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import task
    from .decorator import call_options, distributed, method_options
    from .errors import (
        ConfigError,
        DependencyError,
        ExecutionError,
        KernelError,
        ManifestError,
        PluginError,
        RequestError,
        ServiceAccessError,
        ServiceLoadError,
        ServiceNotFoundError,
        ServiceStartError,
    )
    from .hookspecs import hookimpl
    from .interfaces import ServiceState
    from .kernel import Kernel
    from .service import BaseService

_ERRORS = (
    "ConfigError", "DependencyError", "ExecutionError", "KernelError", "ManifestError", "PluginError",
    "RequestError", "ServiceAccessError", "ServiceLoadError", "ServiceNotFoundError", "ServiceStartError",
)
_WHERE = {
    "Kernel": "kernel", "ServiceState": "interfaces", "BaseService": "service",
    "distributed": "decorator", "method_options": "decorator", "call_options": "decorator",
    "hookimpl": "hookspecs",
    **dict.fromkeys(_ERRORS, "errors"),
}
__all__ = [
    "BaseService",
    "ConfigError",
    "DependencyError",
    "ExecutionError",
    "Kernel",
    "KernelError",
    "ManifestError",
    "PluginError",
    "RequestError",
    "ServiceAccessError",
    "ServiceLoadError",
    "ServiceNotFoundError",
    "ServiceStartError",
    "ServiceState",
    "call_options",
    "distributed",
    "hookimpl",
    "method_options",
    "task",
]


def __getattr__(name: str) -> Any:
    if name == "task":  # the module, imported on first use like the rest
        return importlib.import_module(".task", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kernel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
