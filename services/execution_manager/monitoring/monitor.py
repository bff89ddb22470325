"""The execution manager's watch loop and what ``get_stats`` reports.

:class:`Monitor` samples the machine and each local worker with psutil (off the event
loop), takes node slots' figures from their heartbeats, enforces the memory limits and
runs the scaling policy every ``monitorInterval``. :meth:`Monitor.stats` assembles a
:class:`.stats.Stats` from the pool as it is now.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import anyio.to_thread
import psutil
import structlog

from ..executors import NodeListener, Worker
from ..pool import WorkerPool
from .stats import ProjectStats, RunningCall, Stats, SystemLoad, WorkerStats

HOST = socket.gethostname()
log = structlog.get_logger("execution-manager")


def running_calls(executor: Worker, now: float) -> list[RunningCall]:
    """What ``executor`` runs now: label, elapsed against timeout, latest progress."""
    out = []
    for call in executor.inflight.values():
        fraction, message = call.progress or (None, "")
        out.append(RunningCall(
            call=call.label, task_id=call.id, attempt=call.attempt,
            elapsed=max(0.0, now - call.started) if call.started else 0.0,
            timeout=call.timeout, progress=fraction, message=message or None,
        ))
    return out


class Monitor:
    """Load sampling, memory limits and autoscaling for one pool (see module docstring)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.load = SystemLoad(cpu_percent=0.0, memory_percent=0.0, avg_load=0.0)
        self.metrics: dict[str, tuple[float, int]] = {}  # worker id -> (CPU %, RSS bytes)
        self._procs: dict[int, psutil.Process] = {}

    def stats(self, listener: NodeListener | None, nodes_address: str | None, pinned: int) -> Stats:
        pool = self.pool
        s = pool.settings
        queued = pool.sched.queue.by_project()
        nodes = listener.nodes() if listener else []
        beats = {n.id: n for n in nodes}
        now = time.perf_counter()
        details = []
        for worker in pool.fleet.members:
            ex = worker.backend
            info = ex.info()
            cpu, rss = self.metrics.get(worker.id, (0.0, 0))
            node = beats.get(info.node) if info.node else None
            details.append(WorkerStats(
                id=worker.id, node_type=ex.node_type, state="draining" if worker.retiring and ex.is_available
                else ex.state.value, pid=info.pid, address=info.address, running=worker.running, done=ex.done,
                failed=ex.failed, cpu_percent=cpu, memory_rss=rss, pinned=worker.pinned, node=info.node,
                host=(node.address.rpartition(":")[0] or node.address) if node else info.node or HOST,
                heartbeat_age=node.heartbeat_age if node else None, calls=running_calls(ex, now),
            ))
        return Stats(
            workers=len(details), min_workers=s.min_workers, max_workers=s.max_workers, starting=pool.fleet.starting,
            system_load=self.load, active_tasks=sum(d.running for d in details),
            queued_tasks=pool.waiting, local_tasks=pool.fleet.local.running if pool.fleet.local else 0,
            queued_by_priority=pool.sched.queue.by_priority(),
            projects={
                name: ProjectStats(running=pool.sched.projects.running.get(name, 0), queued=queued.get(name, 0),
                                   limit=pool.sched.projects.limits.get(name))
                for name in sorted({*pool.sched.projects.limits, *pool.sched.projects.running, *queued})
            },
            tasks_done=pool.tally.done, tasks_failed=pool.tally.failed, attempts_failed=pool.tally.attempts_failed,
            tasks_retried=pool.tally.retried,
            pinned_instances=pinned, last_scaling=pool.fleet.last_scaling, scaling=pool.fleet.last_decision,
            recent_placements=list(pool.placements),
            worker_details=details,
            nodes=nodes, nodes_address=nodes_address,
            node_refusals=dict(listener.refusals()) if listener else {},
            nodes_problem=listener.problem() if listener else None,
            soft_memory_limit=s.soft_memory_limit, hard_memory_limit=s.hard_memory_limit,
        )

    def enforce_memory(self, metrics: Mapping[str, tuple[float, int]]) -> None:
        """Above hardMemoryLimit the running call is stopped (an error names RSS and
        limit); above softMemoryLimit the worker is replaced between calls."""
        pool = self.pool
        soft, hard = pool.settings.soft_memory_limit, pool.settings.hard_memory_limit
        for worker in pool.fleet.members:
            rss = metrics.get(worker.id, (0.0, 0))[1]
            if _over(rss, hard) and worker.backend.inflight:
                pool.fleet.kill(worker, f"RSS {rss:,} bytes above hardMemoryLimit {hard:,}")
            elif _over(rss, soft):
                pool.fleet.recycle(worker, f"RSS {rss:,} bytes above softMemoryLimit {soft:,}")

    async def run(self) -> None:
        """Sample every ``sampleInterval`` and autoscale every ``monitorInterval``, until
        cancelled."""
        pool = self.pool
        s = pool.settings
        every = min(s.sample_interval, s.monitor_interval)
        next_scale = time.monotonic() + s.monitor_interval
        while True:
            await asyncio.sleep(every)
            pids: dict[str, int | None] = {}
            remote: dict[str, tuple[float, int]] = {}
            local = []
            for worker in pool.fleet.members:
                info = worker.backend.info()
                if info.node is None:
                    pids[worker.id] = info.pid
                    local.append(worker)
                else:  # a node's slot: its heartbeats carry the figures
                    remote[worker.id] = (info.cpu_percent or 0.0, info.rss or 0)
            load, metrics, statuses = await anyio.to_thread.run_sync(_sample, pids, self._procs)
            for worker in local:  # liveness, judged from outside each worker process
                why = worker.backend.check_alive(statuses.get(worker.id), s.heartbeat_timeout)
                if why is not None:
                    log.warning("worker declared dead", worker_id=worker.id, reason=why)
            metrics.update(remote)
            self.load, self.metrics = load, metrics
            pool.fleet.set_load(load.cpu_percent, load.memory_percent)
            self.enforce_memory(metrics)
            now = time.monotonic()
            if now >= next_scale:
                next_scale = now + s.monitor_interval
                pool.fleet.autoscale(now)


def _over(rss: int, limit: int | None) -> bool:
    return limit is not None and rss > limit


def _sample(
    pids: Mapping[str, int | None], procs: dict[int, psutil.Process]
) -> tuple[SystemLoad, dict[str, tuple[float, int]], dict[str, str]]:
    cpus = os.cpu_count() or 1
    load = SystemLoad(
        cpu_percent=psutil.cpu_percent(None),
        memory_percent=psutil.virtual_memory().percent,
        avg_load=min(1.0, os.getloadavg()[0] / cpus),
    )
    metrics: dict[str, tuple[float, int]] = {}
    statuses: dict[str, str] = {}
    for wid, pid in pids.items():
        if pid is None or pid == os.getpid():
            continue
        try:
            proc = procs.get(pid) or procs.setdefault(pid, psutil.Process(pid))
            statuses[wid] = proc.status()
            metrics[wid] = (proc.cpu_percent(None), proc.memory_info().rss)
        except psutil.ZombieProcess:
            statuses[wid] = psutil.STATUS_ZOMBIE
        except psutil.Error:
            procs.pop(pid, None)
    return load, metrics, statuses
