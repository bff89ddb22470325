"""The microkernel's exceptions; the execution manager's own derive from these.

Code above a seam catches only the project's errors; plugins translate native errors
(OSError, EOF, pickling errors...) into them. The execution manager's errors
(``microkernel.services.execution_manager.errors``) subclass :class:`ExecutionError`.

::

    KernelError
    ├── ManifestError (ValueError)          a config.json is invalid: file + fields
    │   └── ConfigError                     a service's `custom` settings are invalid
    ├── UsageError (ValueError)             what the caller asked for is wrong (CLI exit 2)
    │   ├── SettingsError                   a `settings=` / `--set` override: service + field
    │   └── ShadowingError                  an app module would replace one of ours
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
        if len(self.problems) == 1:  # one line
            field, msg = self.problems[0]
            super().__init__(f"{self.path}: {field}: {msg}" if field else f"{self.path}: {msg}")
            return
        lines = [f"  - {field}: {msg}" if field else f"  - {msg}" for field, msg in problems]
        super().__init__(f"{self.path}: {len(self.problems)} problems\n" + "\n".join(lines))


class ConfigError(ManifestError):
    """A service's ``custom`` settings failed its own settings model."""


class UsageError(KernelError, ValueError):
    """What the caller asked for is wrong (a setting, a path): the ``kernel`` command
    prints it as one line and exits with 2, as for a bad flag."""


class SettingsError(UsageError):
    """An override given to the kernel (``Kernel(settings=...)``, ``kernel run --set``)
    names an unknown service or fails the service's settings model.

    ``problems`` are ``(field, message)`` pairs, ``field`` dotted inside ``custom``
    (``nodes.port``); an empty field is about the service itself.
    """

    def __init__(self, service: str, problems: Sequence[tuple[str, str]], *, unknown: bool = False) -> None:
        self.service = service
        self.problems = list(problems)
        self.unknown = unknown  # no service of that name: every setting given for it is at fault
        text = "; ".join(f"{service}.{f}: {m}" if f else f"{service}: {m}" for f, m in self.problems)
        super().__init__(f"settings given for service {service!r}: {text}")


class ShadowingError(UsageError):
    """A module of the application's would be imported in place of one of ours."""

    def __init__(self, path: Path | str, package: str) -> None:
        self.path = Path(path)
        self.package = package
        super().__init__(f"{self.path} would replace the {package!r} package this kernel is made of "
                         f"(in the kernel and in its workers): rename it")


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
    """A service with ``failOnError`` failed to import or start; the kernel stopped.

    The message says what was raised and where in the service's own code
    (:func:`kernel.blame.describe`).
    """

    def __init__(self, service: str, cause: BaseException) -> None:
        from .blame import describe, where

        self.service = service
        if isinstance(cause, ServiceLoadError):  # its message names the service already
            at = where(cause.__cause__) if cause.__cause__ is not None else None
            text = f"service {service!r} ({cause.path}) failed to load: {cause.reason}" + (f"\n  at {at}" if at else "")
        else:
            text = f"service {service!r} failed to start: {describe(cause)}"
        super().__init__(text)


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
    "SettingsError",
    "ShadowingError",
    "UsageError",
]
