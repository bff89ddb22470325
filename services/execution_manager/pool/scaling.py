"""How many workers run: the carrier of the scaling layer's decisions for one fleet.

The decisions are pure functions of a snapshot in :mod:`..scheduling.policy`
(``busy_start``, ``plan_scaling``, ``plan_bounds``, ``memory_verdicts``); :class:`Scaling`
passes them what it sees, carries out the instructions they return (start workers; stop
this one, and why) through the :class:`.fleet.Fleet`, and keeps the last decision, with
what it saw, for ``get_stats()`` and the dashboard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from ..events import EventBus
from ..scheduling import (
    Sample,
    ScalePlan,
    ScalingDecision,
    Scheduler,
    StartWorker,
    busy_start,
    memory_verdicts,
    plan_bounds,
    plan_scaling,
)
from ..scheduling.stimuli import Load, Stimulus
from .fleet import Fleet

log = structlog.get_logger("execution-manager")


class Scaling:
    """Starts and retires the fleet's workers as the scaling policy says."""

    def __init__(self, fleet: Fleet, sched: Scheduler, feed: Callable[[Stimulus], None], events: EventBus) -> None:
        self.fleet = fleet
        self._sched = sched  # read only: how many calls wait
        self._feed = feed
        self.events = events
        self.cpu_percent = 0.0  # the machine's, as last sampled
        self.memory_percent = 0.0
        self.last_scaling = "none yet"
        self.last_decision: ScalingDecision | None = None
        self.last_scale_up: float | None = None

    def observe(self, sample: Sample, *, scale: bool) -> None:
        """The sampler's report: each of the kernel machine's workers judges its own
        liveness from its process's state, the machine's load opens or closes the
        in-process worker, workers over a memory limit are stopped, and with ``scale``
        the scaling policy runs."""
        fleet, s = self.fleet, self.fleet.settings
        for worker in fleet.members:
            if worker.backend.info().node is None:  # a node's slots: their node judges them
                why = worker.backend.check_alive(sample.statuses.get(worker.id), s.heartbeat_timeout)
                if why is not None:
                    log.warning("worker declared dead", worker_id=worker.id, reason=why)
        self.memory_percent, self.cpu_percent = sample.memory_percent, sample.cpu_percent
        if fleet.in_process is not None:
            low = sample.cpu_percent < fleet.limits.in_process_threshold * 100
            if low != self._sched.in_process_open:
                self._feed(Load(fleet.loop.time(), low))
        for stop in memory_verdicts(fleet.members, sample.rss, soft=s.soft_memory_limit, hard=s.hard_memory_limit):
            fleet.stop_worker(stop)
        if scale:
            self.autoscale(fleet.loop.time())

    def autoscale(self, now: float) -> ScalePlan:
        """The scaling policy's periodic decision, carried out."""
        fleet = self.fleet
        plan = plan_scaling(
            fleet.members, fleet.limits, starting=fleet.starting, queued=len(self._sched.queue),
            memory_percent=self.memory_percent, now=now, last_scale_up=self.last_scale_up,
            cpu_percent=self.cpu_percent,
        )
        self._carry(plan, now)
        return plan

    def grow(self) -> None:
        """Calls wait: start a worker now if none is free (see ``busy_start``)."""
        fleet = self.fleet
        if fleet.closed:
            return
        plan = busy_start(fleet.members, fleet.limits, live=fleet.live(), starting=fleet.starting,
                          queued=len(self._sched.queue), memory_percent=self.memory_percent)
        if plan.rule != "steady":
            self._carry(plan, fleet.loop.time())

    def set_bounds(self, min_workers: int | None = None, max_workers: int | None = None) -> str:
        """Change minWorkers / maxWorkers while running (None: keep). Starts workers up
        to the new minimum now and retires those above the new maximum (the least busy
        first, draining). Returns the decision, also kept as the last one.

        :raises ValueError: naming the bound at fault.
        """
        fleet = self.fleet
        lo = fleet.settings.min_workers if min_workers is None else min_workers
        hi = fleet.settings.max_workers if max_workers is None else max_workers
        for name, value in (("minWorkers", lo), ("maxWorkers", hi)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, not {value!r}")
        if lo > hi:
            raise ValueError(f"minWorkers ({lo}) is above maxWorkers ({hi})")
        if hi == 0 and fleet.settings.nodes is None:
            raise ValueError("maxWorkers 0 leaves no worker at all: nodes are not enabled (custom.nodes)")
        fleet.settings = fleet.settings.model_copy(update={"min_workers": lo, "max_workers": hi})
        fleet.limits = fleet.limits._replace(min_workers=lo, max_workers=hi)
        log.info("scaling bounds changed", min_workers=lo, max_workers=hi)
        plan = plan_bounds(fleet.members, fleet.limits, starting=fleet.starting)
        self._carry(plan, fleet.loop.time())
        self.last_scaling = plan.reason
        return plan.reason

    def _carry(self, plan: ScalePlan, now: float) -> None:
        """Carry out a scaling plan's instructions, and keep the decision for stats."""
        self._decided(plan.rule, plan.reason, started=plan.start, worker=plan.worker, idle_seconds=plan.idle)
        if plan.start or plan.retire:
            self.last_scaling = plan.reason
            log.info("scaling", start=plan.start, retire=list(plan.retire), reason=plan.reason)
        fleet = self.fleet
        for instruction in plan.instructions:
            if isinstance(instruction, StartWorker):
                for _ in range(instruction.count):
                    fleet.spawn()
                self.last_scale_up = now
                self.events.emit("scaled-up", count=instruction.count, reason=instruction.reason)
            elif fleet.leave_soon(instruction.worker_id, instruction.reason, drain=instruction.drain):
                self.events.emit("scaled-down", worker_id=instruction.worker_id, reason=instruction.reason)

    def _decided(self, rule: str, reason: str, **fields: Any) -> None:
        """Keep the decision and what it saw, for get_stats() and the dashboard."""
        free = sum(1 for w in self.fleet.members if w.available and not w.running and not w.external)
        self.last_decision = ScalingDecision(
            at=time.time(), rule=rule, reason=reason, cpu_percent=self.cpu_percent,
            memory_percent=self.memory_percent, waiting=len(self._sched.queue), free_workers=free, **fields)
