"""The execution manager's exceptions: what a call, a worker and the pool raise.

Executors translate native errors (OSError, EOF, pickling errors...) into these, and
code above the executor seam catches only these. All derive from
:class:`kernel.errors.ExecutionError` (``retryable`` says whether running the same call
again elsewhere may succeed: the call itself was not at fault).

::

    ExecutionError (kernel.errors)
    ├── RequestError (kernel.errors)        a call's request to the kernel failed
    ├── SerializationError (TypeError)      an argument or result cannot be pickled
    ├── RemoteError                         the call raised; its type could not be rebuilt
    ├── MethodNotFoundError (AttributeError)
    ├── WorkerCrashedError                  the worker died mid-call        [retryable]
    ├── WorkerStartError                    a worker could not be started   [retryable]
    ├── InstanceLostError                   a pinned instance's worker died
    ├── CallTimeoutError (TimeoutError)     the call ran out of time; it was stopped
    ├── SoftTimeoutError (TimeoutError)     raised inside a call at its soft timeout
    ├── QueueFullError                      maxQueue calls already wait (submit(block=False))
    ├── UnsatisfiableError (ValueError)     no worker could ever offer what a call asks
    ├── WorkerConflictError                 a worker cannot take this action (now, or ever)
    ├── CallRevokedError                    the call was revoked by its task id; it never runs again
    ├── MessageError                        a pinned instance could not answer an operator's message
    └── PoolClosedError                     the pool is stopping or stopped
"""

from __future__ import annotations

from kernel.errors import ExecutionError


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


class WorkerConflictError(ExecutionError):
    """A worker cannot take the action asked for: it is leaving already, or its kind
    cannot (a Dask worker is restarted by its cluster, not by the kernel). HTTP 409."""


class CallRevokedError(ExecutionError):
    """The call was revoked by its task id (``em.revoke``, the API, ``kernel revoke``): a
    queued call never ran, a running one was stopped (its worker replaced); it is never
    retried."""


class MessageError(ExecutionError):
    """A pinned instance could not answer an operator's message (``em.send``): it has no
    ``on_message``, it raised, or its reply is not JSON; the message says which."""


class PoolClosedError(ExecutionError):
    """The execution manager is stopping or stopped and takes no new calls."""


__all__ = [
    "CallTimeoutError",
    "InstanceLostError",
    "MethodNotFoundError",
    "PoolClosedError",
    "QueueFullError",
    "RemoteError",
    "SerializationError",
    "SoftTimeoutError",
    "UnsatisfiableError",
    "WorkerCrashedError",
    "WorkerStartError",
]
