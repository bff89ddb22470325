"""What runs inside a Dask worker: our runtime, one per executor (so instances pinned
to it live in that worker process, as they would in a local worker), and the channel
that carries a call's progress, logs and requests back to the kernel.

Progress and logs go out as Dask worker events (``log_event`` on :data:`TOPIC`, which
the kernel's client subscribes to). A request goes out the same way and its answer
comes back through a Dask ``Variable`` named in the request: the call's thread waits
on it; the worker's event loop and its other threads do not.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from distributed import WorkerPlugin

from kernel.errors import RequestError
from kernel.task import forward_logging
from microkernel.services.execution_manager.executors import Runtime

TOPIC = "microkernel-call-traffic"
REQUEST_TIMEOUT = 300.0  # seconds a call waits for the kernel's answer
_runtimes: dict[str, Runtime] = {}
_lock = threading.Lock()


class DaskChannel:
    """A :class:`~microkernel.services.execution_manager.executors.CallChannel` over Dask worker events."""

    def __init__(self, executor_id: str) -> None:
        from distributed import get_worker

        self.executor_id = executor_id
        self.worker = get_worker()  # made on a task's thread; calls may talk from others

    def _send(self, message: dict[str, Any]) -> None:
        self.worker.log_event(TOPIC, {"executor": self.executor_id, **message})  # thread-safe

    def progress(self, task_id: int, fraction: float, message: str) -> None:
        with contextlib.suppress(ValueError):  # ValueError: not inside a Dask worker any more
            self._send({"kind": "progress", "call": task_id, "fields": (fraction, message)})

    def log(self, task_id: int, level: str, message: str, fields: Mapping[str, Any]) -> None:
        with contextlib.suppress(ValueError):
            plain = {k: v if isinstance(v, str | int | float | bool | None) else repr(v) for k, v in fields.items()}
            self._send({"kind": "log", "call": task_id, "fields": (level, message, plain)})

    def request(self, task_id: int, route: str, payload: bytes) -> tuple[bool, bytes]:
        from distributed import Variable

        name = f"microkernel-answer-{uuid.uuid4().hex}"
        answer = None
        try:
            answer = Variable(name, client=self.worker._get_client())
            self._send({"kind": "request", "call": task_id, "fields": (name, route, payload)})
            ok, data = answer.get(timeout=REQUEST_TIMEOUT)
        except TimeoutError:
            raise RequestError(f"request {route!r}: no answer from the kernel in {REQUEST_TIMEOUT:g} s") from None
        except (ValueError, OSError) as exc:
            raise RequestError(f"request {route!r}: the kernel cannot be reached from this Dask worker: {exc}") from exc
        finally:
            if answer is not None:
                with contextlib.suppress(Exception):  # best effort: the scheduler may be gone
                    answer.delete()
        return bool(ok), bytes(data)


def runtime(executor_id: str) -> Runtime:
    with _lock:
        rt = _runtimes.get(executor_id)
        if rt is None:
            forward_logging()
            rt = _runtimes[executor_id] = Runtime(executor_id, DaskChannel(executor_id))
        return rt


def run(executor_id: str, kind: int, payload: bytes, task_id: int, attempt: int = 1) -> tuple[bool, Any, float]:
    """A Dask task: run one call through the worker's runtime on this worker. The
    reply, and the seconds the call ran (the rest of the round trip is Dask's)."""
    started = time.perf_counter()
    ok, data = runtime(executor_id).execute(kind, payload, task_id, attempt)
    return ok, data, time.perf_counter() - started


def forget(executor_id: str) -> int:
    """Drop a worker's runtime and the instances still pinned in it; how many."""
    with _lock:
        rt = _runtimes.pop(executor_id, None)
    if rt is None:
        return 0
    held = len(rt.pinned)
    rt.close()
    return held


class ServicePackages(WorkerPlugin):
    """A Dask worker plugin: makes the kernel's service folders importable in every
    worker, present and future, as local workers and nodes have them (the folders must
    exist at the same paths there: a shared file system or the same checkout)."""

    name = "microkernel-service-packages"

    def __init__(self, packages: Mapping[str, str]) -> None:
        self.packages = dict(packages)

    def setup(self, worker: Any) -> None:
        from kernel.packages import install_finder

        install_finder(self.packages)
