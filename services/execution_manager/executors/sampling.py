"""One psutil sampler, for the kernel's monitor and a node's agent alike: the machine's
load and each worker process's CPU, memory and state (what liveness is judged from,
outside the worker's own Python thread)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import psutil

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Reading(Generic[K]):
    """One sample: the machine's CPU and memory (percent) and load average (share of its
    CPUs), and per worker (by the caller's key) its process's CPU percent, resident
    memory and psutil status."""

    cpu_percent: float
    memory_percent: float
    avg_load: float
    processes: dict[K, tuple[float, int]] = field(default_factory=dict)
    statuses: dict[K, str] = field(default_factory=dict)


class ProcessSampler(Generic[K]):
    """Samples the machine and worker processes. psutil's CPU figures are the use since
    the previous reading, so each process object is kept between samples. Blocking:
    call :meth:`sample` in a thread."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)  # the first reading starts the measure

    def sample(self, pids: Mapping[K, int | None]) -> Reading[K]:
        """A reading of the machine and of the processes ``pids`` names (None, or this
        process's own pid: not sampled)."""
        processes: dict[K, tuple[float, int]] = {}
        statuses: dict[K, str] = {}
        me = os.getpid()
        for key, pid in pids.items():
            if not pid or pid == me:
                continue
            try:
                proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                statuses[key] = proc.status()
                processes[key] = (proc.cpu_percent(None), proc.memory_info().rss)
            except psutil.ZombieProcess:
                statuses[key] = psutil.STATUS_ZOMBIE
            except psutil.Error:
                self._procs.pop(pid, None)
        live = {pid for pid in pids.values() if pid}
        for pid in [pid for pid in self._procs if pid not in live]:  # workers gone: forget them
            del self._procs[pid]
        return Reading(psutil.cpu_percent(None), psutil.virtual_memory().percent,
                       min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)), processes, statuses)
