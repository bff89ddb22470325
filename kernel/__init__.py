"""A plugin-based microkernel for Python services.

The kernel discovers, validates, orders, starts and stops services (folders with a
``config.json``) and hands them out by name. The execution manager that runs heavy work
on a pool ships beside it as a service (``microkernel.services.execution_manager``);
this package imports nothing of it. Public names are loaded on first use, so worker
processes that only need ``kernel.task`` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_names

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


__getattr__ = lazy_names(__name__, _WHERE, ("task",))


def __dir__() -> list[str]:
    return __all__
