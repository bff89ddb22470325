"""What running calls send the kernel (:mod:`kernel.task`): progress, logs, requests.

:class:`CallTraffic` is the :class:`microkernel.services.execution_manager.executors.CallHost` of every executor in the
pool. Progress goes to the caller's handle and onto the call (``attempt.progress``); log
lines go to the kernel's log with the task, worker and node ids bound; a request runs a
*route*: ``service`` (a method of a global service) and ``stats`` are built in, and
``ExecutionManager.add_route`` adds more.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from kernel.errors import KernelError, RequestError

from ..executors import Attempt
from ..wire.serialization import dumps, dumps_exception, loads, type_name

if TYPE_CHECKING:
    from kernel.interfaces import ServiceHost

log = structlog.get_logger("worker")
Route = Callable[..., Any]  # (call, *args, **kwargs) -> answer, or an awaitable of it
_LEVELS = {name: logging.getLevelName(name.upper()) for name in ("debug", "info", "warning", "error", "critical")}


class CallTraffic:
    """Serves running calls' progress, logs and requests (see the module docstring)."""

    def __init__(self, kernel: ServiceHost, stats: Callable[[], Awaitable[Any]]) -> None:
        self.kernel = kernel
        self.routes: dict[str, Route] = {"service": self._service, "stats": self._stats}
        self._get_stats = stats

    # -- microkernel.services.execution_manager.executors.CallHost --------------------------------------------

    def progress(self, attempt: Attempt, fraction: float, message: str) -> None:
        if not 0.0 <= fraction <= 1.0:
            return  # the worker validates; a peer that does not is ignored, not trusted
        attempt.progress = (fraction, message)
        if attempt.on_progress is not None:
            attempt.on_progress(fraction, message)

    def log(self, attempt: Attempt, level: str, message: str, fields: Mapping[str, Any]) -> None:
        if attempt.watch is not None:
            attempt.watch.logged(attempt, level, message, fields)
        numeric = _LEVELS.get(level, logging.INFO)
        extra = {k: v for k, v in fields.items() if k not in ("event", "level")}
        log.log(numeric, message, **{**attempt.bound(), **extra, "task_id": attempt.id, "attempt": attempt.attempt,
                                     "worker_id": attempt.worker_id, "call": attempt.label})

    async def request(self, attempt: Attempt, route: str, payload: bytes) -> tuple[bool, bytes]:
        try:
            handler = self.routes.get(route)
            if handler is None:
                known = ", ".join(sorted(self.routes))
                raise RequestError(f"{attempt.describe()} asked for an unknown route {route!r} (known: {known})")
            args, kwargs = loads(payload)
            answer = handler(attempt, *args, **kwargs)
            if inspect.isawaitable(answer):
                answer = await answer
            return True, dumps(answer)
        except Exception as exc:
            return False, _pickled_error(exc, route)

    # -- built-in routes --------------------------------------------------------------

    def _service(self, attempt: Attempt, service: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            instance = self.kernel.get_service(service)
        except KernelError as exc:
            raise RequestError(f"{attempt.describe()} asked for service {service!r}: {exc}") from None
        fn = getattr(instance, method, None) if not method.startswith("_") else None
        if not callable(fn):
            raise RequestError(f"{attempt.describe()} asked for {service}.{method}: service {service!r} "
                               f"has no public method {method!r}")
        return fn(*args, **kwargs)

    async def _stats(self, attempt: Attempt) -> dict[str, Any]:
        stats = await self._get_stats()
        return stats.model_dump(mode="json")  # type: ignore[no-any-return]


def _pickled_error(exc: Exception, route: str) -> bytes:
    data = dumps_exception(exc)
    if data is None:
        data = dumps(RequestError(f"request {route!r} failed in the kernel: {type_name(exc)}: {exc}"))
    return data
