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

from kernel.lazy import lazy_face

if TYPE_CHECKING:
    from .client import (
        AsyncClient as AsyncClient,
        AuthError as AuthError,
        Client as Client,
        ClientError as ClientError,
        JobFailed as JobFailed,
        JobNotFound as JobNotFound,
        JobRejected as JobRejected,
    )
    from .model import Job as Job, JobState as JobState, LogLine as LogLine
    from .tasks import Launch as Launch, TaskType as TaskType

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
