"""The one exception hierarchy of the kernel and its execution manager.

Code above a seam (the kernel, the execution manager, services) catches only these;
executors translate native errors (OSError, EOF, pickling errors...) into them.

::

    KernelError
    ├── ManifestError (ValueError)          a config.json is invalid: file + fields
    ├── ServiceLoadError                    a service's module or entry cannot be loaded
    ├── DependencyError                     cycle, missing dependency, duplicate name
    ├── ServiceStartError                   a failOnError service failed to start
    ├── ServiceNotFoundError (LookupError)  unknown service name
    │   └── ServiceAccessError              known, but not visible to the caller
    ├── ConfigError (ValueError)            a service's `custom` settings are invalid
    ├── PluginError                         a plugin or node type is missing or broken
    └── ExecutionError                      running a call went wrong
        ├── SerializationError (TypeError)  an argument or result cannot be pickled
        ├── RemoteError                     the call raised; its type could not be rebuilt
        ├── MethodNotFoundError (AttributeError)
        ├── WorkerCrashedError              the worker died mid-call        [retryable]
        ├── WorkerStartError                a worker could not be started   [retryable]
        ├── InstanceLostError               a pinned instance's worker died
        ├── CallTimeoutError (TimeoutError) the call ran out of time; it was stopped
        ├── SoftTimeoutError (TimeoutError) raised inside a call at its soft timeout
        ├── QueueFullError                  maxQueue calls already wait (submit(block=False))
        ├── UnsatisfiableError (ValueError) no worker could ever offer what a call asks
        └── PoolClosedError                 the pool is stopping or stopped

``retryable`` on an ExecutionError says whether running the same call again elsewhere
may succeed: the call itself was not at fault.
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


class SerializationError(ExecutionError, TypeError):
    """An argument, the callable, or a result cannot be serialised (pickled)."""


class RemoteError(ExecutionError):
    """A call raised an exception whose type could not be rebuilt in the caller.

    ``type_name`` is the remote exception's qualified type name, ``remote_traceback``
    the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}")


class RequestError(ExecutionError):
    """A request from a running call to the kernel (:mod:`kernel.task`) could not be
    served: an unknown route or service, a call outside a task, or no kernel to ask.
    Raised inside the call; the worker carries on."""


class MethodNotFoundError(ExecutionError, AttributeError):
    """The worker's copy of a service has no such method."""


class WorkerCrashedError(ExecutionError):
    """The worker holding the call died before answering.

    Names the worker, its pid, how it ended (exit code or signal) and the call.
    ``started`` is False for a call the worker had received but not begun: the
    execution manager runs such calls elsewhere, since they never ran.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        worker_id: str = "",
        pid: int | None = None,
        exitcode: int | None = None,
        call: str = "",
        started: bool = True,
    ) -> None:
        self.worker_id = worker_id
        self.pid = pid
        self.exitcode = exitcode
        self.call = call
        self.started = started
        super().__init__(message)


class WorkerStartError(ExecutionError):
    """A worker could not be started or did not register in time."""

    retryable = True


class InstanceLostError(ExecutionError):
    """The worker holding a pinned instance died; its state since assignment is lost."""


class CallTimeoutError(ExecutionError, TimeoutError):
    """The call did not finish within its timeout. A queued call never ran; a running
    one was stopped (its worker ended and replaced)."""


class SoftTimeoutError(ExecutionError, TimeoutError):
    """Raised *inside* a running call when its soft timeout passes, so that it can
    clean up; uncaught, it reaches the caller like any exception of the call."""


class QueueFullError(ExecutionError):
    """``maxQueue`` calls already wait and the call asked not to (``block=False``)."""


class UnsatisfiableError(ExecutionError, ValueError):
    """A call asks for resources no worker there is, or could be started, offers."""


class PoolClosedError(ExecutionError):
    """The execution manager is stopping or stopped and takes no new calls."""


__all__ = [
    "CallTimeoutError",
    "ConfigError",
    "DependencyError",
    "ExecutionError",
    "InstanceLostError",
    "KernelError",
    "ManifestError",
    "MethodNotFoundError",
    "PluginError",
    "PoolClosedError",
    "QueueFullError",
    "RemoteError",
    "SerializationError",
    "ServiceAccessError",
    "ServiceLoadError",
    "ServiceNotFoundError",
    "ServiceStartError",
    "SoftTimeoutError",
    "UnsatisfiableError",
    "WorkerCrashedError",
    "WorkerStartError",
]
