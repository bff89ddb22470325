"""The microkernel's exceptions; the execution manager's own derive from these.

Code above a seam catches only the project's errors; plugins translate native errors
(OSError, EOF, pickling errors...) into them. The execution manager's errors
(``microkernel.services.execution_manager.errors``) subclass :class:`ExecutionError`.

::

    KernelError
    ├── ManifestError (ValueError)          a config.json is invalid: file + fields
    │   └── ConfigError                     a service's `custom` settings are invalid
    ├── ServiceLoadError                    a service's module or entry cannot be loaded
    ├── DependencyError                     cycle, missing dependency, duplicate name
    ├── ServiceStartError                   a failOnError service failed to start
    ├── ServiceNotFoundError (LookupError)  unknown service name
    │   └── ServiceAccessError              known, but not visible to the caller
    ├── PluginError                         a plugin or node type is missing or broken
    └── ExecutionError                      running a call went wrong (``retryable``)
        └── RequestError                    kernel.task could not reach the kernel
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path


class KernelError(Exception):
    """Base class of every error the kernel raises on purpose."""


class ManifestError(KernelError, ValueError):
    """A manifest (or a service's ``custom`` settings) is invalid.

    ``problems`` holds every problem found, as ``(field, message)`` pairs, so that a
    user fixes them all in one go.
    """

    def __init__(self, path: Path | str, problems: Sequence[tuple[str, str]]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        lines = [f"  - {field}: {msg}" if field else f"  - {msg}" for field, msg in problems]
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{self.path}: {count} {noun}\n" + "\n".join(lines))


class ConfigError(ManifestError):
    """A service's ``custom`` settings failed its own settings model."""


class ServiceLoadError(KernelError):
    """A service's module could not be imported or its entry class found."""

    def __init__(self, service: str, path: Path | str, reason: str) -> None:
        self.service = service
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"service {service!r} ({self.path}): {reason}")


class DependencyError(KernelError):
    """Services cannot be ordered: a cycle, a missing dependency or a duplicate name."""

    def __init__(self, message: str, services: Iterable[str]) -> None:
        self.services = list(services)
        super().__init__(message)


class ServiceStartError(KernelError):
    """A service with ``failOnError`` failed to import or start; the kernel stopped."""

    def __init__(self, service: str, cause: BaseException) -> None:
        self.service = service
        super().__init__(f"service {service!r} failed to start: {cause}")


class ServiceNotFoundError(KernelError, LookupError):
    """No service of that name is known to the kernel."""

    def __init__(self, name: str, known: Iterable[str], detail: str | None = None) -> None:
        self.name = name
        self.known = sorted(known)
        listing = ", ".join(self.known) or "none"
        text = detail or f"no service named {name!r}"
        super().__init__(f"{text} (known services: {listing})")


class ServiceAccessError(ServiceNotFoundError):
    """The service exists but is neither global nor a declared dependency of the caller."""


class PluginError(KernelError):
    """A plugin, hook or node type is missing or misbehaves."""


class ExecutionError(KernelError):
    """Running a call went wrong."""

    retryable: bool = False


class RequestError(ExecutionError):
    """A request from a running call to the kernel (:mod:`kernel.task`) could not be
    served: an unknown route or service, a call outside a task, or no kernel to ask.
    Raised inside the call; the worker carries on."""


__all__ = [
    "ConfigError",
    "DependencyError",
    "ExecutionError",
    "KernelError",
    "ManifestError",
    "PluginError",
    "RequestError",
    "ServiceAccessError",
    "ServiceLoadError",
    "ServiceNotFoundError",
    "ServiceStartError",
]
