"""Running calls on the executing side (a worker process, or in-process).

Every executor runs a decoded CALL through :class:`Runtime`, so a function, a replica
method or a pinned instance behaves the same wherever it lands.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from kernel import task
from kernel.decorator import inline, original_method

from ..errors import InstanceLostError, MethodNotFoundError, SerializationError
from ..wire import protocol as p
from ..wire.serialization import dumps, dumps_exception, dumps_result, format_exception, loads, type_name


class CallChannel(Protocol):
    """How a worker's calls reach the kernel, on the wire's terms (requests travel
    pickled). Implementations may be called from any thread of the call."""

    def progress(self, task_id: int, fraction: float, message: str) -> None:
        """Report progress (never blocks; may be dropped if the kernel is gone)."""

    def log(self, task_id: int, level: str, message: str, fields: Mapping[str, Any]) -> None:
        """Send a log line to the kernel's log (never blocks on the kernel)."""

    def request(self, task_id: int, route: str, payload: bytes) -> tuple[bool, bytes]:
        """Ask the kernel and wait for its answer: ``(True, pickled result)`` or
        ``(False, pickled exception)``.

        :raises RequestError: the kernel cannot be reached.
        """


class _TaskChannel:
    """:class:`kernel.task.TaskChannel` over a worker's :class:`CallChannel`."""

    __slots__ = ("log", "progress", "wire")

    def __init__(self, wire: CallChannel) -> None:
        self.wire = wire
        self.progress = wire.progress
        self.log = wire.log

    def request(self, task_id: int, route: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        ok, data = self.wire.request(task_id, route, dumps((args, kwargs)))
        value = loads(data)
        if ok:
            return value
        raise value


class ErrorInfo(NamedTuple):
    """An exception, ready to cross a process boundary."""

    type_name: str
    message: str
    traceback: str
    exception: bytes | None

    @classmethod
    def of(cls, exc: BaseException, where: str = "") -> ErrorInfo:
        tb = format_exception(exc)
        if where:
            tb = f"(on {where})\n{tb}"
        return cls(type_name(exc), str(exc), tb, dumps_exception(exc))


def run_chunk(fn: Any, items: list[Any]) -> list[Any]:
    """One chunk of ``map``: ``fn`` over each item, in order."""
    return [fn(item) for item in items]


# A reply: (True, pickled result) or (False, ErrorInfo).
Reply = tuple[bool, Any]


class Runtime:
    """Executes calls; holds the instances pinned to this executor."""

    def __init__(self, worker_id: str, channel: CallChannel | None = None) -> None:
        self.worker_id = worker_id
        # how calls report progress, log and ask the kernel
        self.channel = None if channel is None else _TaskChannel(channel)
        self.pinned: dict[str, Any] = {}
        self._local = threading.local()
        self._loops: list[Any] = []  # one per thread that ran an async method

    def execute(self, kind: int, payload: bytes, task_id: int = 0, attempt: int = 1) -> Reply:
        token = inline.set(True)
        current = task.enter(self.channel, task_id, self.worker_id, attempt)
        try:
            label = "call"
            try:
                obj = loads(payload)
            except Exception as exc:
                raise SerializationError(
                    f"cannot unpickle the call on worker {self.worker_id}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if kind == p.CALL_FN:
                fn, args, kwargs = obj
                label = getattr(fn, "__qualname__", None) or repr(fn)
                result = fn(*args, **kwargs)
            elif kind == p.CALL_METHOD:
                instance, name, args, kwargs = obj
                label = f"{type(instance).__name__}.{name}"
                result = self._method(instance, name)(instance, *args, **kwargs)
            elif kind == p.CALL_PINNED:
                key, name, args, kwargs = obj
                instance = self._pinned(key)
                label = f"{type(instance).__name__}.{name}"
                result = self._method(instance, name)(instance, *args, **kwargs)
            elif kind == p.PIN:
                key, instance = obj
                self.pinned[key] = instance
                result = None
            elif kind == p.UNPIN:
                label = "release"
                result = self.pinned.pop(obj, None)
            else:
                raise ValueError(f"unknown call kind {kind}")
            if inspect.isawaitable(result):
                result = self._await(result)
            return True, dumps_result(label, result)
        except Exception as exc:
            return False, ErrorInfo.of(exc, f"worker {self.worker_id}, pid {os.getpid()}")
        finally:
            task.leave(current)
            inline.reset(token)

    def tell(self, payload: bytes) -> list[tuple[bool, str]]:
        """An operator's message (JSON) for each instance pinned here, in pin order: its
        ``on_message(msg)`` answers (True, its reply as JSON), or (False, why not: no
        handler, it raised, a reply that is not JSON). Between calls, never inside one."""
        import json

        msg = json.loads(payload)
        replies: list[tuple[bool, str]] = []
        for instance in list(self.pinned.values()):
            name = type(instance).__qualname__
            handler = original_method(type(instance), "on_message")
            if handler is None:
                replies.append((False, f"{name} has no on_message(self, msg) to take messages"))
                continue
            try:
                answer = handler(instance, msg)
                if inspect.isawaitable(answer):
                    answer = self._await(answer)
            except Exception as exc:
                replies.append((False, f"{name}.on_message raised {type(exc).__name__}: {exc}"))
                continue
            try:
                replies.append((True, json.dumps(answer)))
            except (TypeError, ValueError) as exc:
                replies.append((False, f"{name}.on_message answered what is not JSON: {exc}"))
        return replies

    def _pinned(self, key: str) -> Any:
        try:
            return self.pinned[key]
        except KeyError:
            raise InstanceLostError(
                f"no instance {key!r} is pinned on worker {self.worker_id}"
            ) from None

    def _method(self, instance: Any, name: str) -> Any:
        fn = original_method(type(instance), name)
        if fn is None or name.startswith("_"):
            service = getattr(instance, "name", "") or "?"
            raise MethodNotFoundError(
                f"{type(instance).__qualname__} (service {service!r}) has no method "
                f"{name!r} on worker {self.worker_id}"
            )
        return fn

    def _await(self, awaitable: Any) -> Any:
        loop = getattr(self._local, "loop", None)
        if loop is None:
            import asyncio  # only for async methods: keeps worker start-up lean

            loop = self._local.loop = asyncio.new_event_loop()
            self._loops.append(loop)

        async def wrap() -> Any:
            return await awaitable

        return loop.run_until_complete(wrap())

    def close(self) -> None:
        """Close the event loops async methods ran on (those not running right now)."""
        for loop in self._loops:
            if not loop.is_running():
                loop.close()
