"""The execution manager's watch loop and what ``get_stats`` reports.

:class:`Monitor` samples the machine and each local worker with psutil (off the event
loop), takes node slots' figures from their heartbeats, enforces the memory limits and
runs the scaling policy every ``monitorInterval``. :meth:`Monitor.stats` assembles a
:class:`.stats.Stats` from the pool as it is now.
"""

from __future__ import annotations

import asyncio
import socket
import time

import anyio.to_thread
import structlog

from ..executors import NodeListener, ProcessSampler
from ..pool import CallReport, WorkerPool
from ..scheduling import Sample
from .stats import ProjectStats, RunningCall, Stats, SystemLoad, WorkerStats

HOST = socket.gethostname()
log = structlog.get_logger("execution-manager")


def running_calls(calls: tuple[CallReport, ...], now: float) -> list[RunningCall]:
    """What a worker runs now: label, elapsed against timeout, latest progress."""
    return [
        RunningCall(call=c.label, task_id=c.task_id, attempt=c.attempt,
                    elapsed=max(0.0, now - c.started) if c.started else 0.0, timeout=c.timeout,
                    progress=c.progress, message=c.message)
        for c in calls
    ]


class Monitor:
    """Load sampling, memory limits and autoscaling for one pool (see module docstring)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.load = SystemLoad(cpu_percent=0.0, memory_percent=0.0, avg_load=0.0)
        self.metrics: dict[str, tuple[float, int]] = {}  # worker id -> (CPU %, RSS bytes)
        self._sampler: ProcessSampler[str] = ProcessSampler()

    def stats(self, listener: NodeListener | None, nodes_address: str | None, pinned: int) -> Stats:
        """``get_stats()``: the pool's snapshot, with this monitor's samples and the nodes."""
        snap = self.pool.snapshot()
        nodes = listener.nodes() if listener else []
        beats = {n.id: n for n in nodes}
        now = time.perf_counter()
        details = []
        for w in snap.workers:
            info = w.info
            cpu, rss = self.metrics.get(w.id, (0.0, 0))
            node = beats.get(info.node) if info.node else None
            details.append(WorkerStats(
                id=w.id, node_type=w.node_type, state=w.state, pid=info.pid, address=info.address,
                running=w.running, done=w.done, failed=w.failed, cpu_percent=cpu, memory_rss=rss, pinned=w.pinned,
                node=info.node, host=(node.address.rpartition(":")[0] or node.address) if node else info.node or HOST,
                heartbeat_age=node.heartbeat_age if node else None, calls=running_calls(w.calls, now),
                restarts=w.restarts,
            ))
        queued = snap.queued_by_project
        return Stats(
            workers=len(details), min_workers=snap.min_workers, max_workers=snap.max_workers,
            starting=snap.starting, system_load=self.load, active_tasks=sum(d.running for d in details),
            queued_tasks=snap.queued, held_tasks=snap.held, in_process_tasks=snap.in_process_running,
            queued_by_priority=dict(snap.queued_by_priority),
            projects={
                name: ProjectStats(running=snap.project_running.get(name, 0), queued=queued.get(name, 0),
                                   limit=snap.project_limits.get(name))
                for name in sorted({*snap.project_limits, *snap.project_running, *queued})
            },
            tasks_done=snap.done, tasks_failed=snap.failed, attempts_failed=snap.attempts_failed,
            tasks_retried=snap.retried, pinned_instances=pinned, last_scaling=snap.last_scaling,
            scaling=snap.last_decision, recent_placements=[dict(p) for p in snap.placements],
            worker_details=details, nodes=nodes, nodes_address=nodes_address,
            node_refusals=dict(listener.refusals()) if listener else {},
            nodes_problem=listener.problem() if listener else None,
            soft_memory_limit=self.pool.settings.soft_memory_limit,
            hard_memory_limit=self.pool.settings.hard_memory_limit,
        )

    async def run(self) -> None:
        """Sample every ``sampleInterval`` and hand the pool what it saw (it judges
        liveness, memory limits and, every ``monitorInterval``, scaling), until cancelled."""
        pool = self.pool
        s = pool.settings
        every = min(s.sample_interval, s.monitor_interval)
        next_scale = time.monotonic() + s.monitor_interval
        while True:
            await asyncio.sleep(every)
            pids: dict[str, int | None] = {}
            remote: dict[str, tuple[float, int]] = {}
            for worker_id, info in pool.worker_infos().items():
                if info.node is None:
                    pids[worker_id] = info.pid
                else:  # a node's slot: its heartbeats carry the figures
                    remote[worker_id] = (info.cpu_percent or 0.0, info.rss or 0)
            reading = await anyio.to_thread.run_sync(self._sampler.sample, pids)
            load = SystemLoad(cpu_percent=reading.cpu_percent, memory_percent=reading.memory_percent,
                              avg_load=reading.avg_load)
            metrics, statuses = {**reading.processes, **remote}, reading.statuses
            self.load, self.metrics = load, metrics
            now = time.monotonic()
            scale = now >= next_scale
            if scale:
                next_scale = now + s.monitor_interval
            rss = {w: used for w, (_, used) in metrics.items()}
            pool.scaling.observe(Sample(load.cpu_percent, load.memory_percent, rss, statuses), scale=scale)
