"""A plugin-based microkernel for Python services.

The kernel discovers, validates, orders, starts and stops services (folders with a
``config.json``) and hands them out by name. The execution manager that runs heavy work
on a pool ships beside it as a service (``microkernel.services.execution_manager``);
this package imports nothing of it. Public names are loaded on first use, so worker
processes that only need ``kernel.task`` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_face

if TYPE_CHECKING:
    from . import task as task
    from .decorator import call_options as call_options, distributed as distributed, method_options as method_options
    from .errors import (
        ConfigError as ConfigError,
        DependencyError as DependencyError,
        ExecutionError as ExecutionError,
        KernelError as KernelError,
        ManifestError as ManifestError,
        PluginError as PluginError,
        RequestError as RequestError,
        ServiceAccessError as ServiceAccessError,
        ServiceLoadError as ServiceLoadError,
        ServiceNotFoundError as ServiceNotFoundError,
        ServiceStartError as ServiceStartError,
    )
    from .hookspecs import hookimpl as hookimpl
    from .interfaces import ServiceState as ServiceState
    from .kernel import Kernel as Kernel
    from .service import BaseService as BaseService

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
