"""The status snapshot: one JSON document behind the dashboard, ``/api/*`` and
``kernel status``. Everything here is read from the kernel as it is now; nothing is
computed per request beyond what :meth:`ExecutionManager.get_stats` already does.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ...executors import package_version

if TYPE_CHECKING:
    from ..history import History
    from .manager import Manager

STARTED = time.time()


def services(em: Manager) -> list[dict[str, Any]]:
    """Every service the kernel knows, in start order, with its state and error."""
    kernel = em.kernel
    out = []
    for name, state in kernel.service_states().items():
        error = kernel.service_error(name)
        out.append({"name": name, "state": state.value,
                    "error": None if error is None else f"{type(error).__name__}: {error}"})
    return out


async def snapshot(em: Manager, history: History) -> dict[str, Any]:
    """The whole status document (see the README's "Seeing it work" for its fields)."""
    stats = await em.get_stats()
    data = stats.model_dump(mode="json")
    workers = data.pop("worker_details")
    for w in workers:
        w["last_exit"] = history.last_exit(w["id"])
    now = time.time()
    return {
        "kernel": {"pid": os.getpid(), "version": package_version(), "started": STARTED, "now": now},
        "pool": {
            "min_workers": stats.min_workers, "max_workers": stats.max_workers, "workers": stats.workers,
            "starting": stats.starting, "load": data["system_load"], "running": stats.active_tasks,
            "in_process_running": stats.in_process_tasks, "queued": stats.queued_tasks, "held": stats.held_tasks,
            "queued_by_priority": {str(k): v for k, v in stats.queued_by_priority.items()},
            "done": stats.tasks_done, "failed": stats.tasks_failed, "retried": history.retried,
            "rate": round(history.rate(stats.tasks_done), 2), "pinned_instances": stats.pinned_instances,
            "soft_memory_limit": stats.soft_memory_limit, "hard_memory_limit": stats.hard_memory_limit,
        },
        "workers": workers,
        "exited": list(history.exits),
        "nodes": data["nodes"],
        "nodes_address": stats.nodes_address,
        "node_refusals": stats.node_refusals,
        "nodes_problem": stats.nodes_problem,
        "services": services(em),
        "projects": data["projects"],
        "failures": list(history.failures),
        "scaling": {"last": stats.last_scaling, "decision": asdict(stats.scaling) if stats.scaling else None,
                    "recent": list(history.scaling)},
        "placements": data["recent_placements"],
    }
