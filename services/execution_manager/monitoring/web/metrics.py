"""``/metrics``: the pool in Prometheus' text format, through prometheus_client.

A custom collector reads the kernel's own counters at scrape time, on a private
registry (no process-global state, no multiprocess mode): workers report CPU and
memory in their frames and heartbeats, and the kernel already counts everything else.
Names follow Prometheus' conventions: one ``microkernel_`` prefix, ``_total`` on
counters, base units (``_seconds``, ``_bytes``, ``_ratio``), bounded labels only (kind,
state, reason, outcome, priority; never a task id).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ...pool import Buckets
    from ..history import History
    from .manager import Manager

PREFIX = "microkernel_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, doc: str, buckets: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(PREFIX + name, doc, buckets=buckets.cumulative(), sum_value=buckets.total)


class PoolCollector(Collector):
    """Collects one execution manager's figures (see the module docstring)."""

    def __init__(self, em: Manager, history: History) -> None:
        self.em = em
        self.history = history

    def collect(self) -> Iterator[Metric]:
        em, h = self.em, self.history
        pool, monitor = em.pool, em.monitor
        if pool is None or monitor is None:
            return
        snap = pool.snapshot()
        workers = GaugeMetricFamily(PREFIX + "workers", "Workers in the pool", labels=["kind", "state"])
        by_state = Counter((w.node_type, w.state) for w in snap.workers)
        for (kind, state), n in sorted(by_state.items()):
            workers.add_metric([kind, state], n)
        yield workers
        rss = GaugeMetricFamily(PREFIX + "worker_memory_rss_bytes", "Resident memory of workers",
                                labels=["kind"])
        by_kind: Counter[str] = Counter()
        for w in snap.workers:
            by_kind[w.node_type] += monitor.metrics.get(w.id, (0.0, 0))[1]
        for kind, total in sorted(by_kind.items()):
            rss.add_metric([kind], total)
        yield rss
        starts = CounterMetricFamily(PREFIX + "worker_starts", "Workers started", labels=["kind"])
        for kind, n in sorted(h.starts.items()):
            starts.add_metric([kind], n)
        yield starts
        exits = CounterMetricFamily(PREFIX + "worker_exits", "Workers ended, by reason", labels=["kind", "reason"])
        for (kind, reason), n in sorted(h.exit_counts.items()):
            exits.add_metric([kind, reason], n)
        yield exits
        calls = CounterMetricFamily(PREFIX + "calls", "Calls finished, by outcome", labels=["outcome"])
        calls.add_metric(["done"], snap.done)
        calls.add_metric(["failed"], snap.failed)
        yield calls
        yield CounterMetricFamily(PREFIX + "attempts_failed", "Attempts that ended in error, retried or not",
                                  value=snap.attempts_failed)
        yield CounterMetricFamily(PREFIX + "retries", "Attempts started again after one failed",
                                  value=snap.retried)
        yield GaugeMetricFamily(PREFIX + "calls_running", "Calls running now",
                                value=sum(w.running for w in snap.workers))
        queue = GaugeMetricFamily(PREFIX + "queue_depth", "Calls waiting for a worker", labels=["priority"])
        for priority, n in snap.queued_by_priority.items():
            queue.add_metric([str(priority)], n)
        yield queue
        yield GaugeMetricFamily(PREFIX + "calls_held", "Calls held at the door by back-pressure (maxQueue)",
                                value=snap.held)
        yield _histogram("call_duration_seconds", "Time calls ran on a worker", h.timings.duration)
        yield _histogram("queue_wait_seconds", "Time calls waited before a worker took them", h.timings.wait)
        listener = em.listener
        nodes = GaugeMetricFamily(PREFIX + "node_connections", "Connected remote nodes", labels=["state"])
        for state, n in sorted(Counter(n.state for n in (listener.nodes() if listener else [])).items()):
            nodes.add_metric([state], n)
        yield nodes
        refused = CounterMetricFamily(PREFIX + "node_auth_failures", "Node connections refused, by reason",
                                      labels=["reason"])
        for reason, n in sorted((listener.refusals() if listener else {}).items()):
            refused.add_metric([reason], n)
        yield refused
        load = monitor.load
        yield GaugeMetricFamily(PREFIX + "host_cpu_ratio", "The kernel machine's CPU use",
                                value=load.cpu_percent / 100)
        yield GaugeMetricFamily(PREFIX + "host_memory_ratio", "The kernel machine's memory use",
                                value=load.memory_percent / 100)


def registry_for(em: Manager, history: History) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(em, history))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
