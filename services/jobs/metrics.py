"""The jobs on the execution manager's ``/metrics``: how many by state and task type."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class JobCollector(Collector):
    """Reads the store's counts at scrape time (``counts``: (state, type) -> jobs)."""

    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self.counts()
        except Exception:  # the store is closing or away: no figure rather than a failed scrape
            return
        jobs = GaugeMetricFamily("microkernel_jobs", "Jobs in the job store, by state and task type",
                                 labels=["state", "type"])
        for (state, kind), n in sorted(counts.items()):
            jobs.add_metric([state, kind], n)
        yield jobs
