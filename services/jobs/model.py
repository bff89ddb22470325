"""What a job is: its request, as the API takes it, and its record, as the store keeps it."""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from .settings import JobError


class LogLine(NamedTuple):
    """One line of a job's log (``seq`` counts from 1)."""

    seq: int
    at: float
    level: str
    line: str


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # was running when its kernel died, and was not retryable

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


# The request's fields that every task type shares; the rest are the task's own.
COMMON = ("type", "priority", "project", "timeout", "retries", "key", "name")
# A request without "type" names it by the field only that type has.
TYPE_BY_FIELD = {"service": "service", "function": "function", "module": "module", "code": "code",
                 "command": "shell", "url": "http", "payload": "pickle"}


MAX_TIMEOUT = 30 * 24 * 3600  # a job's longest timeout, in seconds


@dataclass(frozen=True)
class JobRequest:
    """A validated request: the options every job has, and the task type's own fields."""

    type: str
    task: dict[str, Any]
    priority: int = 5
    project: str | None = None
    timeout: float | None = None
    retries: int = 0
    key: str | None = None
    name: str | None = None

    @classmethod
    def parse(cls, body: Any) -> JobRequest:
        """Check the options of a request body (a JSON object); the task's own fields are
        the task type's to check.

        :raises JobError: naming the field at fault.
        """
        if not isinstance(body, Mapping):
            raise JobError(f"a job is a JSON object, not {type(body).__name__}")
        kind = body.get("type")
        if kind is None:
            named = [TYPE_BY_FIELD[f] for f in TYPE_BY_FIELD if f in body]
            if len(named) != 1:
                raise JobError("say the task type: \"type\" is one of service, function, module, code, shell, "
                               "http (or give exactly one of service, function, module, code, command, url)",
                               field="type")
            kind = named[0]
        if not isinstance(kind, str):
            raise JobError(f"type must be a string, not {kind!r}", field="type")
        priority = body.get("priority", 5)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 10:
            raise JobError(f"priority must be an integer 0-10, not {priority!r}", field="priority")
        project = body.get("project")
        if project is not None and (not isinstance(project, str) or not 0 < len(project) <= 200
                                    or not project.isprintable()):
            raise JobError(f"project must be 1-200 printable characters, not {str(project)[:40]!r}", field="project")
        timeout = body.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool)
                                    or not 0 < timeout <= MAX_TIMEOUT):
            raise JobError(f"timeout must be a number of seconds above 0, at most {MAX_TIMEOUT:,} (30 days), "
                           f"not {timeout!r}", field="timeout")
        retries = body.get("retries", 0)
        if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
            raise JobError(f"retries must be an integer 0-100, not {retries!r}", field="retries")
        for name in ("key", "name"):
            value = body.get(name)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 200):
                raise JobError(f"{name} must be a string of 1-200 characters, not {value!r}", field=name)
        task = {k: v for k, v in body.items() if k not in COMMON}
        return cls(kind, task, priority, project, float(timeout) if timeout is not None else None, retries,
                   body.get("key"), body.get("name"))


@dataclass
class Job:
    """One job as the store keeps it and the API shows it."""

    id: str
    type: str
    task: dict[str, Any]
    state: JobState = JobState.QUEUED
    priority: int = 5
    project: str | None = None
    timeout: float | None = None
    retries: int = 0
    key: str | None = None
    name: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # attempts that failed: attempt, worker, error
    worker: str | None = None
    result: Any = None
    error: str | None = None
    progress: float | None = None
    message: str | None = None

    @classmethod
    def new(cls, request: JobRequest) -> Job:
        return cls(uuid.uuid4().hex, request.type, request.task, priority=request.priority,
                   project=request.project, timeout=request.timeout, retries=request.retries, key=request.key,
                   name=request.name)

    def request(self) -> tuple[Any, ...]:
        """What was asked for (an idempotency key stands for one request, not two)."""
        return (self.type, self.task, self.priority, self.project, self.timeout, self.retries, self.name)

    @property
    def retryable(self) -> bool:
        """Whether running it again after its kernel died keeps its promise (retries > 0)."""
        return self.retries > 0

    def describe(self) -> str:
        return f"job {self.id} ({self.name or self.type})"

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _FIELDS}  # shallow: task and result are JSON already
        out["state"] = self.state.value
        return out


_FIELDS = tuple(f.name for f in fields(Job))


def json_size(value: Any) -> tuple[str, int]:
    """``value`` as JSON text and its size in bytes.

    :raises TypeError: it is not JSON (the message says what is not).
    """
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return text, len(text.encode())


class Page(list[Job]):
    """A page of jobs, newest first; ``next`` is the cursor of the page after it (the
    id of its last job), None when it is the last."""

    next: str | None = None
