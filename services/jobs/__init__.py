"""Jobs from outside the kernel: a durable queue (SQLite by default), an HTTP API, a
Python client (sync and async) and ``kernel`` subcommands, and task types that plugins
extend (:mod:`.tasks`, the ``jobs_task_types`` hook).

Glossary: a **job** is a call submitted from outside the kernel's process; it has an
id, a state (queued, running, succeeded, failed, cancelled, lost), attempts, a log,
progress and a result. Its **task type** says what it runs (a service's method, a
function by reference, a module, code, a command, an HTTP request).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.lazy import lazy_names

if TYPE_CHECKING:
    from .client import AsyncClient, AuthError, Client, ClientError, JobFailed, JobNotFound, JobRejected
    from .model import Job, JobState, LogLine
    from .tasks import Launch, TaskType

_WHERE = {
    "AsyncClient": "client", "AuthError": "client", "Client": "client", "ClientError": "client",
    "JobFailed": "client", "JobNotFound": "client", "JobRejected": "client",
    "Job": "model", "JobState": "model", "LogLine": "model", "Launch": "tasks", "TaskType": "tasks",
}
__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "ClientError",
    "Job",
    "JobFailed",
    "JobNotFound",
    "JobRejected",
    "JobState",
    "Launch",
    "LogLine",
    "TaskType",
]
__getattr__ = lazy_names(__name__, _WHERE, ())


def __dir__() -> list[str]:
    return __all__
