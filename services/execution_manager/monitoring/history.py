"""What the pool did lately, for the dashboard, the JSON API and ``/metrics``.

:class:`History` listens to the execution manager's events (worker starts and exits,
retries, final failures with their tracebacks, scaling) and holds the pool's
:class:`microkernel.services.execution_manager.pool.tally.Timings`, which ``/metrics`` exports as Prometheus histograms.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from ..events import EventBus
from ..pool import Timings


def exit_kind(reason: str, expected: bool) -> str:
    """A worker exit reason as a bounded label: stopped, killed, exited, lost, failed."""
    if expected:
        return "stopped"
    for needle, kind in (("killed by signal", "killed"), ("exited with code", "exited"), ("lost", "lost")):
        if needle in reason:
            return kind
    return "failed"


class History:
    """The recent past of one pool (see the module docstring)."""

    def __init__(self, events: EventBus, keep: int = 20) -> None:
        self.failures: deque[dict[str, Any]] = deque(maxlen=keep)
        self.exits: deque[dict[str, Any]] = deque(maxlen=keep)
        self.scaling: deque[dict[str, Any]] = deque(maxlen=keep)
        self.starts: Counter[str] = Counter()  # by executor kind
        self.exit_counts: Counter[tuple[str, str]] = Counter()  # (kind, exit kind)
        self.retried = 0
        self.timings = Timings()
        self._kinds: dict[str, str] = {}
        self._rate: deque[tuple[float, int]] = deque(maxlen=16)
        for name in ("worker-started", "worker-terminated", "worker-retired", "task-retried", "task-failed",
                     "scaled-up", "scaled-down"):
            events.subscribe(name, self._on_event)

    def _on_event(self, event: str, payload: Mapping[str, Any]) -> None:
        now = time.time()
        if event == "worker-started":
            kind = str(payload.get("node_type", "?"))
            self._kinds[payload["worker_id"]] = kind
            self.starts[kind] += 1
        elif event == "worker-terminated":
            wid, reason = payload["worker_id"], str(payload.get("reason", ""))
            kind = self._kinds.pop(wid, "?")
            self.exit_counts[(kind, exit_kind(reason, bool(payload.get("expected"))))] += 1
            self.exits.appendleft({"worker_id": wid, "kind": kind, "reason": reason, "at": now})
        elif event == "worker-retired":  # arrives after it ended: say why it was asked to leave
            wid = payload["worker_id"]
            for entry in self.exits:
                if entry["worker_id"] == wid:
                    entry["reason"] = f"{payload.get('reason')} ({entry['reason']})"
                    break
        elif event == "task-retried":
            self.retried += 1
        elif event == "task-failed":
            self.failures.appendleft({**payload, "at": now})
        else:
            self.scaling.appendleft({"event": event, **payload, "at": now})

    def last_exit(self, worker_id: str) -> str | None:
        """Why the latest worker with this id ended (node slots reuse ids), if it did lately."""
        return next((e["reason"] for e in self.exits if e["worker_id"] == worker_id), None)

    def rate(self, done: int) -> float:
        """Calls finished per second over the last samples (call about once a second)."""
        now = time.monotonic()
        if not self._rate or now - self._rate[-1][0] >= 0.5:  # many readers: sample at most twice a second
            self._rate.append((now, done))
        first_t, first_done = self._rate[0]
        return 0.0 if now - first_t <= 0 else (done - first_done) / (now - first_t)
