"""What a running call can do besides compute: report progress, log, ask the kernel.

Use it from any function, ``@distributed`` method or async method the execution
manager runs, wherever it lands (a local worker, a remote node, the kernel's own
process)::

    from kernel import task

    def crunch(rows):
        for i, row in enumerate(rows):
            ...
            task.progress((i + 1) / len(rows), f"row {i + 1}")
        task.log("crunched", rows=len(rows))
        return task.call_service("store", "save", rows)   # a global service's method

Progress reaches the caller's handle (``handle.on_progress(...)``, ``async for update in
handle.progress_updates()``) and the dashboard; log lines land in the kernel's log with
the task and worker ids; :func:`request` and :func:`call_service` block this call (not
the worker's other business) until the kernel answers, and raise the error the kernel
met (:class:`~kernel.errors.RequestError` for an unknown route or service). In async
code, ``await task.acall_service(...)`` and ``await task.arequest(...)`` do the same
without blocking the call's event loop. Outside a call, :func:`progress` and :func:`log`
do nothing and the requests raise :class:`~kernel.errors.RequestError`.

The execution manager's runtime sets a :class:`TaskChannel` for the duration of each
call; this module imports nothing of it.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from .errors import RequestError
from .logs import resolve_level

PROGRESS_INTERVAL = 0.05  # seconds between progress reports of one call that are sent
LEVELS = ("debug", "info", "warning", "error", "critical")


class TaskChannel(Protocol):
    """How the calls of one executor talk to the kernel (the execution manager's
    runtime sets it for each call). Implementations may be called from any thread of
    the call."""

    def progress(self, call_id: int, fraction: float, message: str) -> None:
        """Report progress (never blocks; may be dropped if the kernel is gone)."""

    def log(self, call_id: int, level: str, message: str, fields: Mapping[str, Any]) -> None:
        """Send a log line to the kernel's log (never blocks on the kernel)."""

    def request(self, call_id: int, route: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Ask the kernel and wait for its answer: the route's result, or the error it
        met raised here.

        :raises RequestError: the kernel cannot be reached, or knows no such route.
        """


class TaskInfo(NamedTuple):
    """The call running in this context: its task id (the same across its attempts), the
    worker it runs on, and which attempt this is (1 the first time, 2 once retried...)."""

    call_id: int
    worker_id: str
    attempt: int = 1


class _Context:
    __slots__ = ("attempt", "call_id", "channel", "last_progress", "worker_id")

    def __init__(self, channel: TaskChannel | None, call_id: int, worker_id: str, attempt: int = 1) -> None:
        self.channel = channel
        self.call_id = call_id
        self.worker_id = worker_id
        self.attempt = attempt
        self.last_progress = 0.0


_current: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("kernel_task", default=None)


def enter(channel: TaskChannel | None, call_id: int, worker_id: str,
          attempt: int = 1) -> contextvars.Token[_Context | None]:
    """Make ``call_id`` (its ``attempt``) the current call (for executors' runtimes)."""
    return _current.set(_Context(channel, call_id, worker_id, attempt))


def leave(token: contextvars.Token[_Context | None]) -> None:
    _current.reset(token)


def current() -> TaskInfo | None:
    """The call running here, or None outside a call."""
    ctx = _current.get()
    return None if ctx is None else TaskInfo(ctx.call_id, ctx.worker_id, ctx.attempt)


def progress(fraction: float, message: str = "") -> None:
    """Report how far the call is, ``fraction`` from 0 to 1, with an optional message.

    Cheap to call often: reports closer than 50 ms apart are skipped, except the first
    and a final one (``fraction >= 1``).
    """
    ctx = _current.get()
    if ctx is None or ctx.channel is None:
        return
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress fraction must be between 0 and 1, not {fraction!r}")
    now = time.monotonic()
    if fraction < 1.0 and ctx.last_progress and now - ctx.last_progress < PROGRESS_INTERVAL:
        return
    ctx.last_progress = now
    ctx.channel.progress(ctx.call_id, fraction, str(message))


def log(message: str, *, level: str = "info", **fields: Any) -> None:
    """Log ``message`` with ``fields`` in the kernel's log, tagged with this call's
    task and worker ids. Outside a call, nothing happens."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    ctx = _current.get()
    if ctx is None or ctx.channel is None:
        return
    ctx.channel.log(ctx.call_id, level, str(message), {k: _plain(v) for k, v in fields.items()})


def request(route: str, *args: Any, **kwargs: Any) -> Any:
    """Ask the kernel: run its ``route`` handler with these arguments and return the
    answer. Routes: ``"service"`` (``service, method, *args``: a global service's
    method, see :func:`call_service`), ``"stats"`` (the pool's statistics), and any a
    plugin or service adds with ``ExecutionManager.add_route``.

    :raises RequestError: unknown route or service, or called outside a call.
    """
    ctx = _current.get()
    if ctx is None or ctx.channel is None:
        raise RequestError(f"task.request({route!r}) works only inside a call run by the execution manager")
    return ctx.channel.request(ctx.call_id, route, args, kwargs)


def call_service(service: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
    """Call ``method`` of the kernel's global service ``service`` and return its result
    (an async method is awaited in the kernel)."""
    return request("service", service, method, *args, **kwargs)


async def arequest(route: str, *args: Any, **kwargs: Any) -> Any:
    """:func:`request` for async code: waits without blocking the event loop."""
    import asyncio  # not at the top: workers that never use it start faster

    return await asyncio.to_thread(request, route, *args, **kwargs)  # copies this context


async def acall_service(service: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
    """:func:`call_service` for async code."""
    return await arequest("service", service, method, *args, **kwargs)


class LogForwarder(logging.Handler):
    """A ``logging`` handler for worker processes: a record made inside a call goes to
    the kernel's log (as :func:`log` does, with the logger's name); one made outside a
    call is written to stderr as usual."""

    def emit(self, record: logging.LogRecord) -> None:
        ctx = _current.get()
        if ctx is None or ctx.channel is None:
            sys.stderr.write(self.format(record) + "\n")
            return
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exception"] = logging.Formatter().formatException(record.exc_info)
            level = record.levelname.lower()
            ctx.channel.log(ctx.call_id, level if level in LEVELS else "info", record.getMessage(), fields)
        except Exception:
            self.handleError(record)


def forward_logging(level: str | None = None) -> None:
    """Send this process's ``logging`` records made inside calls to the kernel (worker
    processes call it once at start). ``level`` defaults to ``$KERNEL_LOG_LEVEL``, else
    ``info``. Idempotent."""
    root = logging.getLogger()
    if any(isinstance(h, LogForwarder) for h in root.handlers):
        return
    handler = LogForwarder()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    try:
        root.setLevel(resolve_level(level)[1])
    except ValueError:
        root.setLevel(logging.INFO)


def _plain(value: Any) -> Any:
    """A log field as msgpack carries it (anything else as its repr)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)
