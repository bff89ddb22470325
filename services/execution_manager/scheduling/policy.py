"""Placement and scaling decisions: pure functions of a snapshot.

No I/O, no clock, no processes: the pool passes what it sees, these return what to
do, and the tests are tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from .stimuli import StartWorker, StopWorker


class WorkerView(Protocol):
    """What a decision reads about one worker."""

    @property
    def id(self) -> str: ...
    @property
    def available(self) -> bool: ...
    @property
    def running(self) -> int: ...
    @property
    def idle_since(self) -> float | None: ...
    @property
    def pinned(self) -> int: ...
    @property
    def external(self) -> bool: ...  # a remote node's slot: capacity, but not the autoscaler's
    @property
    def retiring(self) -> bool: ...  # leaving: takes no new call, and no longer counts as staying


@dataclass(frozen=True)
class ScalingDecision:
    """The autoscaler's last decision, "steady" included, and what it saw."""

    at: float  # when (time.time())
    rule: str  # below-min, scale-up, busy-start, memory-veto, retire-idle, retire-max-idle, bounds, steady
    reason: str
    cpu_percent: float  # the machine's, as sampled
    memory_percent: float
    waiting: int  # calls queued
    free_workers: int  # live workers with nothing to run
    worker: str | None = None  # the one retired
    idle_seconds: float | None = None  # how long it had been idle
    started: int = 0


@dataclass(frozen=True)
class WorkerSnapshot:
    """A plain :class:`WorkerView`, for tests and callers without a pool."""

    id: str
    available: bool = True
    running: int = 0
    idle_since: float | None = None
    pinned: int = 0
    external: bool = False
    retiring: bool = False


class Limits(NamedTuple):
    min_workers: int
    max_workers: int
    in_process: bool = True
    in_process_threshold: float = 0.3
    scale_up_threshold: float = 0.8
    scale_down_threshold: float = 0.3
    memory_limit: float = 0.9
    idle_timeout: float = 60.0
    cooldown: float = 0.0  # seconds after a scale-up during which no worker retires
    max_idle: float = 600.0  # while the machine is busy, idle workers are kept, but never longer than this


def pin_target(workers: Sequence[WorkerView], exclude: str | None = None) -> str | None:
    """The worker an instance should live on: fewest pinned instances, then calls."""
    best: WorkerView | None = None
    for w in workers:
        if w.available and w.id != exclude and (
            best is None or (w.pinned, w.running, w.id) < (best.pinned, best.running, best.id)
        ):
            best = w
    return best.id if best else None


def pin_plan(workers: Sequence[WorkerView], limits: Limits, *, exclude: str | None = None,
             starting: int) -> str | StartWorker | None:
    """Where an instance is pinned: on :func:`pin_target`'s worker if there is one; else,
    with none starting and room below ``max_workers`` (not counting ``exclude``, the worker
    it leaves), on a worker started for it (:class:`StartWorker`); else nowhere yet (None:
    wait for one)."""
    target = pin_target(workers, exclude)
    if target is not None:
        return target
    others = sum(1 for w in workers if w.id != exclude)
    if not starting and others < limits.max_workers:
        return StartWorker(1, "an instance needs a worker to live on")
    return None


class ScalePlan(NamedTuple):
    start: int
    retire: tuple[str, ...]
    reason: str
    rule: str = "steady"  # which rule fired: below-min, busy-start, scale-up, memory-veto, retire-idle, ...
    worker: str | None = None  # the worker retired
    idle: float | None = None  # how long it had been idle, in seconds

    @property
    def instructions(self) -> list[StartWorker | StopWorker]:
        """What the carrier does: start workers, retire (drain) others, each with the reason."""
        out: list[StartWorker | StopWorker] = [StartWorker(self.start, self.reason)] if self.start else []
        out.extend(StopWorker(worker, self.reason) for worker in self.retire)
        return out


def wants_worker(limits: Limits, *, live: int, queued: int) -> bool:
    """Whether a worker should start now that one leaves or died: below ``min_workers``, or
    calls wait and there is room below ``max_workers`` (``live``: the workers the pool
    started that stay, and those starting)."""
    return live < limits.min_workers or (queued > 0 and live < limits.max_workers)


def busy_start(workers: Sequence[WorkerView], limits: Limits, *, live: int, starting: int, queued: int,
               memory_percent: float) -> ScalePlan:
    """Right after the scheduler settled, not at the next tick: calls wait and no worker
    is free, so one more starts at once, below ``max_workers`` (``live``: the workers the
    pool started that stay, unhealthy ones included, and those starting) and while fewer
    are starting than calls wait; memory above ``memory_limit`` vetoes it."""
    free = any(w.available and not w.running and not w.external for w in workers)
    if not queued or free or starting >= queued or live >= limits.max_workers:
        return ScalePlan(0, (), "steady")
    if memory_percent >= limits.memory_limit * 100:
        return ScalePlan(0, (), f"{queued} calls wait but memory is at {memory_percent:.0f}%: not starting a worker",
                         "memory-veto")
    return ScalePlan(1, (), "all workers busy: started one", "busy-start")


def plan_scaling(
    workers: Sequence[WorkerView],
    limits: Limits,
    *,
    starting: int,
    queued: int,
    memory_percent: float,
    now: float,
    last_scale_up: float | None = None,
    cpu_percent: float = 0.0,
) -> ScalePlan:
    """What the monitor does this tick: start workers, retire an idle one, or nothing.

    Up: with calls waiting and more than ``scale_up_threshold`` of the live workers busy,
    one worker is added, unless memory use is above ``memory_limit`` (high CPU alone never
    starts a worker: it would have nothing to run). Down: with no call waiting and the
    pool above ``min_workers``, the worker idle longest (fewest pinned instances first)
    retires once idle for ``idle_timeout`` s while the machine's CPU (``cpu_percent``, the
    whole host) is under ``scale_down_threshold``; while the CPU is higher, idle workers
    are kept, but never longer than ``max_idle`` s. Never within ``cooldown`` s of the
    last scale-up; never a busy worker, whatever its CPU. Remote nodes' slots
    (``external``) count towards load but are never started, retired or counted against
    the bounds.
    """
    live = [w for w in workers if w.available]
    count = sum(1 for w in live if not w.external) + starting
    if count < limits.min_workers:
        return ScalePlan(limits.min_workers - count, (), f"below minWorkers ({count} < {limits.min_workers})",
                         "below-min")
    load = sum(1 for w in live if w.running) / len(live) if live else (1.0 if queued else 0.0)
    if load > limits.scale_up_threshold and queued and count < limits.max_workers:
        if memory_percent >= limits.memory_limit * 100:
            return ScalePlan(0, (), f"load {load:.0%} but memory at {memory_percent:.0f}%: not scaling up",
                             "memory-veto")
        return ScalePlan(1, (), f"load {load:.0%} above {limits.scale_up_threshold:.0%} with {queued} queued",
                         "scale-up")
    cooling = last_scale_up is not None and now - last_scale_up < limits.cooldown
    if count > limits.min_workers and not queued and not cooling:
        quiet = cpu_percent < limits.scale_down_threshold * 100
        wait = limits.idle_timeout if quiet else max(limits.idle_timeout, limits.max_idle)
        idle = [w for w in live if not w.running and not w.external and w.idle_since is not None
                and now - w.idle_since >= wait]
        if idle:
            victim = min(idle, key=lambda w: (w.pinned, w.idle_since or 0.0, w.id))
            idled = now - victim.idle_since if victim.idle_since is not None else 0.0
            why = (f"CPU {cpu_percent:.0f}% below {limits.scale_down_threshold:.0%}" if quiet
                   else f"CPU {cpu_percent:.0f}%, but idle past maxIdle")
            return ScalePlan(0, (victim.id,), f"{victim.id} idle {idled:.0f} s, {why}",
                             "retire-idle" if quiet else "retire-max-idle", victim.id, round(idled, 1))
    return ScalePlan(0, (), "steady")


def plan_bounds(workers: Sequence[WorkerView], limits: Limits, *, starting: int) -> ScalePlan:
    """``min_workers`` and ``max_workers`` changed on request (``limits`` holds the new
    ones): workers start up to the new minimum at once, and those above the new maximum
    retire, draining, the least busy first. Workers already leaving and nodes' slots do
    not count."""
    staying = [w for w in workers if not w.retiring and not w.external]
    live = len(staying) + starting
    over = sorted(staying, key=lambda w: (w.running, w.id))[: max(0, live - limits.max_workers)]
    return ScalePlan(max(0, limits.min_workers - live), tuple(w.id for w in over),
                     f"bounds set to {limits.min_workers}..{limits.max_workers} on request", "bounds")


@dataclass(frozen=True, slots=True)
class Sample:
    """What the psutil sampler saw: the machine's CPU and memory, and per worker the
    resident memory and, for local workers, their process's state."""

    cpu_percent: float
    memory_percent: float
    rss: Mapping[str, int] = field(default_factory=dict)  # worker id -> bytes
    statuses: Mapping[str, str] = field(default_factory=dict)  # worker id -> psutil status


def memory_verdicts(workers: Sequence[WorkerView], rss: Mapping[str, int], *, soft: int | None,
                    hard: int | None) -> list[StopWorker]:
    """Workers over a memory limit: above ``hard`` while running, what it runs is stopped
    now (the error names RSS and limit); above ``soft``, it is replaced between calls."""
    out = []
    for w in workers:
        used = rss.get(w.id, 0)
        if hard is not None and used > hard and w.running:
            out.append(StopWorker(w.id, f"RSS {used:,} bytes above hardMemoryLimit {hard:,}", drain=False))
        elif soft is not None and used > soft:
            out.append(StopWorker(w.id, f"RSS {used:,} bytes above softMemoryLimit {soft:,}"))
    return out


class Verdict(StrEnum):
    """What to do about a worker judged from outside (:func:`judge_liveness`)."""

    ALIVE = "alive"  # nothing: it lives (and is healthy again if it was in doubt)
    PING = "ping"  # idle and quiet for a while: ask it (it answers at once)
    SUSPECT = "suspect"  # in doubt: no new call, judged again at the next sample
    DEAD = "dead"  # end it; its calls fail, or retry, under their policy


class Liveness(NamedTuple):
    verdict: Verdict
    reason: str = ""


def judge_liveness(status: str | None, *, busy: bool, heard: float, pinged: float, suspect_since: float | None,
                   now: float, timeout: float) -> Liveness:
    """Whether a worker of this machine lives, judged from outside, never from its own
    Python thread (a call may hold the GIL): from its process's state as psutil reads it
    (``status``; None: no process), when it was last ``heard``, when the last ping went
    out (``pinged``) and since when it is in doubt (``suspect_since``), on one clock.

    A zombie is dead at once; a process stopped (SIGSTOP) is in doubt, and dead once
    stopped for ``timeout`` s; an idle worker quiet for ``timeout / 3`` s is pinged, and
    dead if the ping goes unanswered for ``timeout`` s. A busy worker is never judged by
    its silence: its call may run long without a word.
    """
    if status in ("zombie", "dead"):
        return Liveness(Verdict.DEAD, "a zombie (its process ended, its socket still open)")
    if status in ("stopped", "tracing-stop"):
        stopped = now - (now if suspect_since is None else suspect_since)
        if stopped < timeout:
            return Liveness(Verdict.SUSPECT, "stopped (SIGSTOP)")
        return Liveness(Verdict.DEAD, f"stopped (SIGSTOP) for {stopped:.1f} s")
    if not busy:
        # Judged from the last ping, not from the last word: an idle worker is quiet
        # between pings, however far apart the samples are.
        if pinged > heard:  # a ping is out, and nothing came since
            if now - pinged > timeout:
                return Liveness(Verdict.DEAD, f"silent for {now - heard:.1f} s while idle (pinged, no answer)")
        elif now - heard > timeout / 3:
            return Liveness(Verdict.PING)
    return Liveness(Verdict.ALIVE)


def chunk_size(items: int, workers: int, *, per_worker: int = 4, cap: int = 10_000) -> int:
    """Items per chunk for ``map``: about ``per_worker`` chunks for each worker."""
    if items <= 0:
        return 1
    return max(1, min(cap, -(-items // (max(1, workers) * per_worker))))
