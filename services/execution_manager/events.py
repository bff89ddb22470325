"""Execution-manager events, for subscribing services and for plugins (pluggy hook)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from .executors import Background

log = structlog.get_logger("execution-manager")

EVENTS = frozenset({
    "task-complete", "attempt-failed", "task-failed",
    "worker-started", "worker-terminated", "worker-error", "worker-retired", "worker-recycled",
    "worker-restarted",
    "task-retried", "scaled-up", "scaled-down", "queue-full",
    "instance-assigned", "instance-released", "instance-moved",
    "instance-lost",
})

# "task-error" was per attempt beside "task-failed", per call.
RENAMED = {"task-error": "attempt-failed"}

Callback = Callable[[str, Mapping[str, Any]], Any]


class EventBus:
    """``subscribe(event, callback)``; ``callback(event, payload)`` may be sync or async.

    ``"*"`` subscribes to every event. A callback that raises is logged and kept.
    """

    def __init__(self, hook: Callable[[str, Mapping[str, Any]], None] | None = None) -> None:
        self._subs: dict[str, list[Callback]] = {}
        self._listening = 0  # callbacks subscribed, over every event
        self._hook = hook
        self.active = hook is not None  # whether anyone listens at all (an attribute: read for every call)
        self._async = Background("event subscribers")

    @property
    def hook(self) -> Callable[[str, Mapping[str, Any]], None] | None:
        """Plugins' ``kernel_event``, when any plugin implements it."""
        return self._hook

    @hook.setter
    def hook(self, hook: Callable[[str, Mapping[str, Any]], None] | None) -> None:
        self._hook = hook
        self.active = hook is not None or self._listening > 0

    def wants(self, event: str) -> bool:
        """Whether anyone listens to ``event`` (to skip building per-call payloads)."""
        return self._hook is not None or bool(self._subs.get(event) or self._subs.get("*"))

    def subscribe(self, event: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` on ``event``; returns a function that unsubscribes."""
        if event in RENAMED:
            raise ValueError(f"the event {event!r} was renamed {RENAMED[event]!r} (version 0.2)")
        if event != "*" and event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(sorted(EVENTS))}")
        self._subs.setdefault(event, []).append(callback)
        self._listening += 1
        self.active = True
        return lambda: self._unsubscribe(event, callback)

    def _unsubscribe(self, event: str, callback: Callback) -> None:
        self._subs.get(event, []).remove(callback)
        self._listening -= 1
        self.active = self._hook is not None or self._listening > 0

    def emit(self, event: str, **payload: Any) -> None:
        callbacks = self._subs.get(event, []) + self._subs.get("*", [])
        if self._hook is not None:
            try:
                self._hook(event, payload)
            except Exception:
                log.exception("event hook failed", event_name=event)
        for cb in callbacks:
            try:
                result = cb(event, payload)
                if inspect.isawaitable(result):
                    self._async.spawn(result)
            except Exception:
                log.exception("event subscriber failed", event_name=event)
