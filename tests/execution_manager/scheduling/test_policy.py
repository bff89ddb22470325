"""Scaling, pinning and queue order as tables: snapshot in, decision out."""

from __future__ import annotations

import pytest

from microkernel.services.execution_manager.scheduling.policy import (
    Limits,
    Liveness,
    ScalePlan,
    Verdict,
    WorkerSnapshot,
    busy_start,
    chunk_size,
    judge_liveness,
    memory_verdicts,
    pin_plan,
    pin_target,
    plan_bounds,
    plan_scaling,
)
from microkernel.services.execution_manager.scheduling.queue import pick_next
from microkernel.services.execution_manager.scheduling.stimuli import StartWorker, StopWorker

L = Limits(min_workers=1, max_workers=3, idle_timeout=0.0)
W = WorkerSnapshot


@pytest.mark.parametrize(
    ("workers", "starting", "queued", "memory", "expected"),
    [
        ([], 0, 0, 10.0, ScalePlan(1, (), "below minWorkers (0 < 1)")),
        ([], 1, 0, 10.0, ScalePlan(0, (), "steady")),
        ([W("a", running=1)], 0, 3, 10.0, ScalePlan(1, (), "load 100% above 80% with 3 queued")),
        ([W("a", running=1)], 0, 0, 10.0, ScalePlan(0, (), "steady")),
        ([W("a", running=1)], 0, 3, 95.0, ScalePlan(0, (), "load 100% but memory at 95%: not scaling up")),
        ([W("a", running=1), W("b", running=1), W("c", running=1)], 0, 9, 10.0, ScalePlan(0, (), "steady")),
        # idle: retire one idle worker (fewest pins, longest idle), never a busy one
        ([W("a", idle_since=5.0), W("b", idle_since=1.0), W("c", running=1)], 0, 0, 10.0,
         ScalePlan(0, ("b",), "b idle 9 s, CPU 0% below 30%")),
        ([*[W(x, idle_since=1.0) for x in "abc"], W("d", running=1)], 0, 0, 10.0,
         ScalePlan(0, ("a",), "a idle 9 s, CPU 0% below 30%")),
        ([W("a", idle_since=5.0), W("b", idle_since=1.0)], 0, 0, 10.0, ScalePlan(0, ("b",), "b idle 9 s, CPU 0% below 30%")),
        ([W("a", idle_since=5.0), W("b", idle_since=1.0, pinned=2)], 0, 0, 10.0,
         ScalePlan(0, ("a",), "a idle 5 s, CPU 0% below 30%")),
        ([W("a", idle_since=5.0)], 0, 0, 10.0, ScalePlan(0, (), "steady")),  # at minWorkers
        ([W("a", idle_since=None), W("b", idle_since=None)], 0, 0, 10.0, ScalePlan(0, (), "steady")),
    ],
)
def test_plan_scaling(workers, starting, queued, memory, expected) -> None:
    assert plan_scaling(workers, L, starting=starting, queued=queued, memory_percent=memory, now=10.0)[:3] == expected[:3]


# The retire rule, as specified: idle for idleTimeout while the host's CPU is under
# scaleDownThreshold; while it is higher, kept, but never past maxIdle; never a busy worker.
SPEC = Limits(min_workers=1, max_workers=4, idle_timeout=60.0, max_idle=600.0)


@pytest.mark.parametrize(("workers", "queued", "cpu", "now", "retire"), [
    # one worker busy on a sleeping call, one idle, the machine at 0%: the idle one goes
    ([W("busy", running=1, idle_since=None), W("idle", idle_since=0.0)], 0, 0.0, 61.0, ("idle",)),
    ([W("busy", running=1, idle_since=None), W("idle", idle_since=0.0)], 0, 0.0, 59.0, ()),  # not yet
    ([W("busy", running=1, idle_since=None), W("idle", idle_since=0.0)], 1, 0.0, 61.0, ()),  # a call waits
    ([W("busy", running=1, idle_since=None), W("idle", idle_since=0.0)], 0, 50.0, 61.0, ()),  # the CPU is busy...
    ([W("busy", running=1, idle_since=None), W("idle", idle_since=0.0)], 0, 50.0, 601.0, ("idle",)),  # ...maxIdle
    ([W("a", running=1, idle_since=None), W("b", running=1, idle_since=None)], 0, 0.0, 9999.0, ()),  # never busy
    ([W("only", idle_since=0.0)], 0, 0.0, 9999.0, ()),  # minWorkers
    ([W("a", idle_since=0.0), W("b", idle_since=0.0, external=True)], 0, 0.0, 9999.0, ()),  # a node's slot
])
def test_the_retire_rule(workers: list[WorkerSnapshot], queued: int, cpu: float, now: float, retire: tuple[str, ...]) -> None:
    plan = plan_scaling(workers, SPEC, starting=0, queued=queued, memory_percent=10.0, now=now, cpu_percent=cpu)
    assert plan.retire == retire, plan
    assert plan.start == 0
    if retire:  # the rule that fired, the worker and how long it idled, for get_stats()
        assert plan.rule == ("retire-idle" if cpu < 30 else "retire-max-idle") and plan.worker == retire[0]
        assert plan.idle == now - 0.0
    else:
        assert plan.rule == "steady"


@pytest.mark.parametrize(("cpu", "memory", "start"), [(99.0, 10.0, 1), (0.0, 10.0, 1), (0.0, 95.0, 0)])
def test_high_cpu_alone_never_starts_a_worker(cpu: float, memory: float, start: int) -> None:
    idle_pool = [W("a", idle_since=0.0), W("b", running=1)]
    assert plan_scaling(idle_pool, SPEC, starting=0, queued=0, memory_percent=memory, now=1.0,
                        cpu_percent=cpu).start == 0
    busy_pool = [W("a", running=1), W("b", running=1)]
    assert plan_scaling(busy_pool, SPEC, starting=0, queued=2, memory_percent=memory, now=1.0,
                        cpu_percent=cpu).start == start


def test_idle_timeout() -> None:
    limits = L._replace(idle_timeout=3.0)
    workers = [W("a", idle_since=9.0), W("b", idle_since=5.0)]
    assert plan_scaling(workers, limits, starting=0, queued=0, memory_percent=0, now=10.0).retire == ("b",)
    assert plan_scaling(workers, limits, starting=0, queued=0, memory_percent=0, now=7.0).retire == ()


@pytest.mark.parametrize(("items", "workers", "size"), [(0, 2, 1), (1, 2, 1), (100, 2, 13), (10**6, 2, 10_000), (7, 0, 2)])
def test_chunk_size(items, workers, size) -> None:
    assert chunk_size(items, workers) == size


def test_pin_target() -> None:
    workers = [W("a", pinned=1), W("b", pinned=0, running=3), W("c", pinned=0, running=1), W("d", available=False)]
    assert pin_target(workers) == "c"
    assert pin_target(workers, exclude="c") == "b"
    assert pin_target([W("d", available=False)]) is None


@pytest.mark.parametrize(
    ("heads", "now", "aging", "expected"),
    [
        ([(5, 0.0)], 0.0, 10, 0),
        ([(5, 0.0), (9, 1.0)], 1.0, 10, 1),  # higher priority first
        ([(5, 1.0), (5, 0.0)], 1.0, 10, 1),  # same priority: oldest first
        ([(0, 0.0), (9, 99.0)], 100.0, 10, 0),  # waited 100 s: aged to 10, above 9
        ([(0, 0.0), (10, 99.0)], 100.0, 10, 0),  # both at the cap: the older wins
        ([(0, 0.0), (1, 50.0)], 100.0, 0, 1),  # aging off: strict priority
    ],
)
def test_pick_next(heads, now, aging, expected) -> None:
    assert pick_next(heads, now, aging) == expected


def test_cooldown_after_a_scale_up_keeps_idle_workers() -> None:
    limits = L._replace(cooldown=10.0)
    idle = [W("a", idle_since=0.0), W("b", idle_since=0.0)]
    kwargs = {"starting": 0, "queued": 0, "memory_percent": 10.0}
    assert plan_scaling(idle, limits, now=15.0, last_scale_up=8.0, **kwargs).retire == ()
    assert plan_scaling(idle, limits, now=19.0, last_scale_up=8.0, **kwargs).retire == ("a",)
    assert plan_scaling(idle, limits, now=15.0, last_scale_up=None, **kwargs).retire == ("a",)
    # minWorkers is kept whatever the cooldown
    assert plan_scaling([], limits, now=15.0, last_scale_up=14.0, **kwargs).start == 1


def test_no_flapping_between_the_thresholds() -> None:
    # load 50%: between scaleDownThreshold (30%) and scaleUpThreshold (80%): nothing moves
    workers = [W("a", running=1), W("b", idle_since=0.0)]
    plan = plan_scaling(workers, L, starting=0, queued=5, memory_percent=10.0, now=100.0)
    assert plan == ScalePlan(0, (), "steady")


@pytest.mark.parametrize(("workers", "rss", "soft", "hard", "expected"), [
    ([WorkerSnapshot("w1", running=1)], {"w1": 900}, None, None, []),  # no limits
    ([WorkerSnapshot("w1", running=1)], {"w1": 900}, 1000, 2000, []),  # under both
    ([WorkerSnapshot("w1", running=1)], {"w1": 1500}, 1000, 2000, [("w1", True, "softMemoryLimit 1,000")]),
    ([WorkerSnapshot("w1", running=1)], {"w1": 2500}, 1000, 2000, [("w1", False, "hardMemoryLimit 2,000")]),
    # Over the hard limit but idle: nothing to stop now, so it is replaced between calls.
    ([WorkerSnapshot("w1", running=0)], {"w1": 2500}, 1000, 2000, [("w1", True, "softMemoryLimit 1,000")]),
    ([WorkerSnapshot("w1", running=0)], {"w1": 2500}, None, 2000, []),
    ([WorkerSnapshot("w1", running=1), WorkerSnapshot("w2", running=1)], {"w2": 5000}, None, 2000,
     [("w2", False, "RSS 5,000 bytes")]),
    ([WorkerSnapshot("w1", running=1)], {}, 1000, 2000, []),  # not sampled yet
])
def test_memory_verdicts(workers, rss, soft, hard, expected) -> None:
    out = memory_verdicts(workers, rss, soft=soft, hard=hard)
    assert [(s.worker_id, s.drain) for s in out] == [(w, d) for w, d, _ in expected]
    for stop, (_, _, words) in zip(out, expected, strict=True):
        assert words in stop.reason, stop.reason


# How many workers run, as one table: each row is a snapshot the carrier would pass, and
# the instructions it gets back (start workers; stop this one, and why).
T = Limits(min_workers=1, max_workers=3, idle_timeout=60.0, max_idle=600.0, cooldown=30.0)
BUSY = [W("a", running=1, idle_since=None), W("b", running=1, idle_since=None)]


def busy(workers, *, live=None, starting=0, queued=0, memory=10.0, cpu=0.0, now=0.0, last_up=None):
    return busy_start(workers, T, live=len(workers) + starting if live is None else live, starting=starting,
                      queued=queued, memory_percent=memory)


def tick(workers, *, starting=0, queued=0, memory=10.0, cpu=0.0, now=0.0, last_up=None):
    return plan_scaling(workers, T, starting=starting, queued=queued, memory_percent=memory, now=now,
                        last_scale_up=last_up, cpu_percent=cpu)


def bounds(workers, *, lo=1, hi=3, starting=0, **_):
    return plan_bounds(workers, T._replace(min_workers=lo, max_workers=hi), starting=starting)


@pytest.mark.parametrize(("decide", "workers", "seen", "rule", "instructions"), [
    # Calls wait, no worker is free, below maxWorkers: one starts at once.
    (busy, BUSY, {"queued": 2}, "busy-start", [StartWorker(1, "all workers busy: started one")]),
    # ... unless memory is over the limit.
    (busy, BUSY, {"queued": 2, "memory": 95.0}, "memory-veto", []),
    # ... or a worker is free (the call waits for something a new worker would not have either),
    (busy, [*BUSY, W("c")], {"queued": 2}, "steady", []),
    # ... or as many are starting as calls wait, or the pool is at maxWorkers.
    (busy, BUSY, {"queued": 1, "starting": 1}, "steady", []),
    (busy, [*BUSY, W("c", running=1, idle_since=None)], {"queued": 5}, "steady", []),
    # High CPU alone never starts a worker: nothing waits.
    (busy, BUSY, {"queued": 0, "cpu": 100.0}, "steady", []),
    (tick, BUSY, {"queued": 0, "cpu": 100.0}, "steady", []),
    # Below minWorkers: start up to it.
    (tick, [], {}, "below-min", [StartWorker(1, "below minWorkers (0 < 1)")]),
    # An idle worker retires after idleTimeout when the host's CPU is under 30%, no call
    # waits and the pool is above minWorkers (one busy on a sleeping call, one idle, CPU 0%).
    (tick, [BUSY[0], W("idle", idle_since=0.0)], {"now": 61.0}, "retire-idle",
     [StopWorker("idle", "idle idle 61 s, CPU 0% below 30%")]),
    (tick, [BUSY[0], W("idle", idle_since=0.0)], {"now": 59.0}, "steady", []),
    # While the CPU is 30% or more, idle workers are kept, but never past maxIdle.
    (tick, [BUSY[0], W("idle", idle_since=0.0)], {"now": 61.0, "cpu": 30.0}, "steady", []),
    (tick, [BUSY[0], W("idle", idle_since=0.0)], {"now": 601.0, "cpu": 30.0}, "retire-max-idle",
     [StopWorker("idle", "idle idle 601 s, CPU 30%, but idle past maxIdle")]),
    # A busy worker is never retired, whatever its CPU; nor the last at minWorkers.
    (tick, BUSY, {"now": 99999.0}, "steady", []),
    (tick, [W("only", idle_since=0.0)], {"now": 99999.0}, "steady", []),
    # Cooldown after a scale-up keeps the pool from flapping.
    (tick, [BUSY[0], W("idle", idle_since=0.0)], {"now": 61.0, "last_up": 40.0}, "steady", []),
    # The gap between thresholds: 50% busy is neither up (above 80%) nor a reason to retire a busy one.
    (tick, [BUSY[0], W("b", idle_since=50.0)], {"queued": 1, "now": 61.0}, "steady", []),
    # Bounds set on request: start up to the new minimum at once (counting those starting) ...
    (bounds, BUSY, {"lo": 4, "hi": 5, "starting": 1}, "bounds", [StartWorker(1, "bounds set to 4..5 on request")]),
    # ... retire, draining, those above the new maximum, the least busy first; not those
    # already leaving, nor a node's slots.
    (bounds, [*BUSY, W("idle"), W("gone", retiring=True), W("slot", external=True)], {"lo": 0, "hi": 1},
     "bounds", [StopWorker("idle", "bounds set to 0..1 on request"), StopWorker("a", "bounds set to 0..1 on request")]),
    (bounds, BUSY, {"lo": 1, "hi": 2}, "bounds", []),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_how_many_workers_run(decide, workers, seen, rule, instructions) -> None:
    plan = decide(workers, **seen)
    assert (plan.rule, plan.instructions) == (rule, instructions), plan


@pytest.mark.parametrize(("workers", "exclude", "starting", "expected"), [
    ([W("a", pinned=1), W("b")], None, 0, "b"),  # fewest pinned instances
    ([W("a", available=False)], None, 0, StartWorker(1, "an instance needs a worker to live on")),  # room: start one
    ([W("a")], "a", 0, StartWorker(1, "an instance needs a worker to live on")),  # leaving a: another starts
    ([W("a", available=False)], None, 1, None),  # one is starting: wait for it
    ([W(x, available=False) for x in "abc"], None, 0, None),  # at maxWorkers (3): wait
])
def test_where_an_instance_is_pinned(workers, exclude, starting, expected) -> None:
    assert pin_plan(workers, T, exclude=exclude, starting=starting) == expected


# When a worker of the kernel's machine is declared dead, judged from outside: each row is
# what the carrier sees (its process's state, when it was last heard and pinged, since
# when it is in doubt; the clock at 100, timeout 6) and the verdict it carries out.
@pytest.mark.parametrize(("status", "seen", "expected"), [
    ("running", {}, Liveness(Verdict.ALIVE)),
    ("sleeping", {"busy": True, "heard": 0.0}, Liveness(Verdict.ALIVE)),  # a busy worker is never judged by silence
    ("zombie", {}, Liveness(Verdict.DEAD, "a zombie (its process ended, its socket still open)")),
    ("stopped", {}, Liveness(Verdict.SUSPECT, "stopped (SIGSTOP)")),  # first seen: in doubt, no new call
    ("stopped", {"suspect_since": 97.0}, Liveness(Verdict.SUSPECT, "stopped (SIGSTOP)")),
    ("stopped", {"suspect_since": 94.0, "busy": True}, Liveness(Verdict.DEAD, "stopped (SIGSTOP) for 6.0 s")),
    ("sleeping", {"heard": 97.0}, Liveness(Verdict.PING)),  # idle and quiet past timeout / 3: asked
    ("sleeping", {"heard": 99.0}, Liveness(Verdict.ALIVE)),
    ("sleeping", {"heard": 90.0, "pinged": 95.0}, Liveness(Verdict.ALIVE)),  # pinged 5 s ago: it may still answer
    ("sleeping", {"heard": 90.0, "pinged": 93.0},
     Liveness(Verdict.DEAD, "silent for 10.0 s while idle (pinged, no answer)")),
    ("sleeping", {"heard": 99.0, "pinged": 93.0}, Liveness(Verdict.ALIVE)),  # it answered the ping
    (None, {"heard": 90.0}, Liveness(Verdict.PING)),  # no process state (a node's): still pinged when quiet
])
def test_when_a_worker_is_declared_dead(status, seen, expected) -> None:
    options = {"busy": False, "heard": 100.0, "pinged": 0.0, "suspect_since": None, **seen}
    assert judge_liveness(status, now=100.0, timeout=6.0, **options) == expected
