"""A plugin-based microkernel for Python services with a distributed execution manager.

Public names are loaded on first use, so worker processes that only need the wire
protocol and the runtime start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .decorator import call_options, distributed, method_options
    from .errors import (
        CallTimeoutError,
        ConfigError,
        DependencyError,
        ExecutionError,
        InstanceLostError,
        KernelError,
        ManifestError,
        MethodNotFoundError,
        PluginError,
        PoolClosedError,
        QueueFullError,
        RemoteError,
        RequestError,
        SerializationError,
        ServiceAccessError,
        ServiceLoadError,
        ServiceNotFoundError,
        ServiceStartError,
        SoftTimeoutError,
        UnsatisfiableError,
        WorkerCrashedError,
        WorkerStartError,
    )
    from .executor import Call, Executor, ExecutorInfo, WorkerState
    from .hookspecs import hookimpl
    from .kernel import Kernel, ServiceState
    from .service import BaseService

_WHERE = {
    "Kernel": "kernel", "ServiceState": "kernel", "BaseService": "service",
    "distributed": "decorator", "method_options": "decorator", "call_options": "decorator",
    "hookimpl": "hookspecs",
    "Call": "executor", "Executor": "executor", "ExecutorInfo": "executor",
    "WorkerState": "executor",
    **{
        name: "errors"
        for name in (
            "CallTimeoutError", "ConfigError", "DependencyError", "ExecutionError", "InstanceLostError",
            "KernelError", "ManifestError", "MethodNotFoundError", "PluginError",
            "PoolClosedError", "QueueFullError", "RemoteError", "RequestError", "SerializationError",
            "ServiceAccessError",
            "ServiceLoadError", "ServiceNotFoundError", "ServiceStartError", "SoftTimeoutError", "UnsatisfiableError",
            "WorkerCrashedError", "WorkerStartError",
        )
    },
}
__all__ = [
    "BaseService",
    "Call",
    "CallTimeoutError",
    "ConfigError",
    "DependencyError",
    "ExecutionError",
    "Executor",
    "ExecutorInfo",
    "InstanceLostError",
    "Kernel",
    "KernelError",
    "ManifestError",
    "MethodNotFoundError",
    "PluginError",
    "PoolClosedError",
    "QueueFullError",
    "RemoteError",
    "RequestError",
    "SerializationError",
    "ServiceAccessError",
    "ServiceLoadError",
    "ServiceNotFoundError",
    "ServiceStartError",
    "ServiceState",
    "SoftTimeoutError",
    "UnsatisfiableError",
    "WorkerCrashedError",
    "WorkerStartError",
    "WorkerState",
    "call_options",
    "distributed",
    "hookimpl",
    "method_options",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kernel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
