"""The scheduler as tables: stimuli in, instructions out, no processes, no clock.

Each promise of the kernel-held queue, with every worker busy and call durations
unknown (nothing here knows how long a call takes: calls end when the test says so).
"""

from __future__ import annotations

import random

import pytest

from microkernel.services.execution_manager.scheduling import Scheduler
from microkernel.services.execution_manager.scheduling.ledger import (
    BUDGET,
    LATE,
    MAX_AHEAD,
    SHORT,
    WorkerRecord,
    ahead,
    backoff,
    late_after,
    place,
)
from microkernel.services.execution_manager.scheduling.stimuli import (
    AbortAttempt,
    Answered,
    CallSpec,
    CancelAsked,
    Closing,
    Load,
    Lost,
    Resolve,
    RetryAt,
    Send,
    StopWorker,
    Submitted,
    TakeBack,
    Tick,
    WakeAt,
    WorkerDraining,
    WorkerGone,
    WorkerUnhealthy,
    WorkerUp,
)


def pool(*workers: str | tuple[str, int], **options: object) -> Scheduler:
    s = Scheduler(**options)  # type: ignore[arg-type]
    for w in workers:
        wid, width = (w, 1) if isinstance(w, str) else w
        assert s.handle(WorkerUp(0.0, wid, width)) == []
    return s


def sends(out: list) -> list[tuple[int, str]]:
    return [(i.task_id, i.worker_id) for i in out if isinstance(i, Send)]


def submit(s: Scheduler, task_id: int, now: float = 0.0, **options: object) -> list:
    return s.handle(Submitted(now, CallSpec(task_id, **options)))  # type: ignore[arg-type]


def test_with_every_worker_busy_calls_start_by_priority_then_in_order() -> None:
    s = pool("w1", "w2")
    assert sends(submit(s, 1) + submit(s, 2)) == [(1, "w1"), (2, "w2")]  # both workers busy now
    rng = random.Random(7)
    priorities = {100 + i: rng.randint(0, 10) for i in range(30)}
    for task_id, priority in priorities.items():
        assert submit(s, task_id, now=1.0, priority=priority) == []  # nothing is sent ahead
    assert s.queued == 30
    started = []
    running = {"w1": 1, "w2": 2}
    for step in range(30):
        worker = "w1" if step % 2 == 0 else "w2"
        out = s.handle(Answered(2.0 + step, running[worker], 1))
        [(task_id, where)] = sends(out)
        assert where == worker
        running[worker] = task_id
        started.append(task_id)
    expected = sorted(priorities, key=lambda t: (-priorities[t], t))  # higher first, then FIFO
    assert started == expected
    assert s.queued == 0


def test_an_idle_worker_takes_the_short_calls_while_a_long_one_runs() -> None:
    s = pool("w1", "w2")
    assert sends(submit(s, 1, label="long")) == [(1, "w1")]
    shorts = list(range(10, 20))
    out = []
    for task_id in shorts:
        out += submit(s, task_id)
    assert sends(out) == [(10, "w2")]
    for i, task_id in enumerate(shorts):  # each short call ends; the next goes to the free worker
        out = s.handle(Answered(1.0 + i, task_id, 1))
        assert out[0] == Resolve(task_id, "answered", 1)
        if task_id != shorts[-1]:
            assert sends(out) == [(task_id + 1, "w2")]
    assert s.handle(Answered(20.0, 1, 1)) == [Resolve(1, "answered", 1)]  # the long one ends last


def test_a_cancelled_call_that_has_not_started_never_starts() -> None:
    s = pool("w1")
    submit(s, 1)
    assert submit(s, 2) == []
    assert s.handle(CancelAsked(1.0, 2)) == [Resolve(2, "cancelled", 0)]
    assert s.handle(Answered(2.0, 1, 1)) == [Resolve(1, "answered", 1)]  # no Send of call 2
    assert s.queued == 0 and not s.calls


def test_cancelling_a_running_call_stops_it_and_its_worker_takes_nothing_until_it_ended() -> None:
    s = pool("w1")
    submit(s, 1)
    submit(s, 2)
    assert s.handle(CancelAsked(1.0, 1)) == [AbortAttempt(1, 1, "w1", "cancelled"), Resolve(1, "cancelled", 1)]
    assert s.handle(Tick(2.0)) == []  # w1 is still being stopped: call 2 waits
    out = s.handle(WorkerGone(3.0, "w1", "was stopped"))
    assert out == []  # the cancelled call was resolved already; call 2 had not started
    assert sends(s.handle(WorkerUp(4.0, "w2"))) == [(2, "w2")]


def test_the_timeout_counts_from_the_start_and_the_deadline_only_while_queued() -> None:
    s = pool("w1")
    submit(s, 1)
    assert submit(s, 2, now=0.0, timeout=2.0, deadline=10.0) == [WakeAt(10.0)]  # a Tick by its deadline
    out = s.handle(Answered(5.0, 1, 1))
    assert sends(out) == [(2, "w1")]  # waited 5 s: the timeout had not begun
    assert out[-1] == WakeAt(7.0) and s.next_wakeup() == 7.0  # a Tick sooner: by its timeout
    assert s.handle(Tick(6.9)) == []
    out = s.handle(Tick(7.0))
    assert out == [AbortAttempt(2, 1, "w1", "timeout"), Resolve(2, "timeout", 1, "ran past its timeout of 2 s", "w1")]
    assert s.handle(Tick(20.0)) == []  # its deadline no longer applies: it had started


def test_a_call_past_its_queue_deadline_never_runs() -> None:
    s = pool("w1")
    submit(s, 1)
    submit(s, 2, deadline=1.5)
    assert s.next_wakeup() == 1.5
    assert s.handle(Tick(1.5)) == [Resolve(2, "expired", 0, "waited past its deadline of 1.5 s")]
    assert s.handle(Answered(2.0, 1, 1)) == [Resolve(1, "answered", 1)]


def test_a_draining_or_unhealthy_worker_gets_no_new_call() -> None:
    s = pool("w1", "w2")
    submit(s, 1)
    submit(s, 2)
    s.handle(WorkerDraining(1.0, "w1"))
    s.handle(WorkerUnhealthy(1.0, "w2"))
    assert submit(s, 3, now=1.0) == []
    assert s.handle(Answered(2.0, 1, 1)) == [Resolve(1, "answered", 1), StopWorker("w1", "drained")]
    assert s.handle(Answered(2.0, 2, 1)) == [Resolve(2, "answered", 1)]  # w2 is unhealthy: 3 waits
    assert sends(s.handle(WorkerUnhealthy(3.0, "w2", healthy=True))) == [(3, "w2")]


def test_at_most_once_a_lost_attempt_runs_again_only_when_retries_allow() -> None:
    s = pool("w1", "w2")
    submit(s, 1)
    out = s.handle(Lost(1.0, 1, 1, "w1 exited with code 1"))
    assert out == [Resolve(1, "lost", 1, "w1 exited with code 1", "w1")]
    submit(s, 2, now=2.0, retries=2)
    assert s.handle(Lost(3.0, 2, 1, "killed by SIGKILL")) == [RetryAt(2, 3.0 + backoff(1), 1, "killed by SIGKILL"),
                                                              WakeAt(3.0 + backoff(1))]
    assert s.queued == 1 and s.next_wakeup() == 3.0 + backoff(1)
    assert s.handle(Tick(3.05)) == []  # backing off
    out = s.handle(Tick(3.0 + backoff(1)))
    assert sends(out) == [(2, "w1")]
    assert s.handle(Answered(4.0, 2, 1)) == []  # a late answer from the first attempt: dropped
    assert s.handle(Answered(4.0, 2, 2)) == [Resolve(2, "answered", 2)]


def test_a_call_that_keeps_killing_workers_is_given_up() -> None:
    s = pool("w1", max_deaths=3)
    submit(s, 1, retries=10)
    now = 0.0
    for attempt in (1, 2):
        s.handle(WorkerGone(now, "w1", "segfault"))
        now += backoff(attempt)
        assert sends(s.handle(WorkerUp(now, "w1")) + s.handle(Tick(now))) == [(1, "w1")]
    out = s.handle(WorkerGone(now, "w1", "segfault"))
    assert out == [Resolve(1, "lost", 3, "segfault; given up after 3 workers died running it", "w1")]


def test_a_lost_worker_fails_exactly_the_calls_it_had_started() -> None:
    s = pool(("fat", 3), "thin")
    out = []
    for task_id in (1, 2, 3, 4, 5):
        out += submit(s, task_id)
    assert sends(out) == [(1, "fat"), (2, "thin"), (3, "fat"), (4, "fat")]  # the fewest running first
    running_on_fat = [1, 3, 4]
    assert s.queued == 1
    out = s.handle(WorkerGone(1.0, "fat", "killed by signal SIGKILL"))
    resolved = [i for i in out if isinstance(i, Resolve)]
    assert [r.task_id for r in resolved] == running_on_fat  # each error names its own call
    assert all(r.outcome == "lost" and r.worker_id == "fat" for r in resolved)
    assert s.queued == 1  # the call that had not started is still queued


def test_project_limits_hold_and_other_projects_go_past() -> None:
    s = pool(("w", 4), project_limits={"ml": 1})
    out = submit(s, 1, project="ml") + submit(s, 2, project="ml") + submit(s, 3, project="etl")
    assert sends(out) == [(1, "w"), (3, "w")]
    assert sends(s.handle(Answered(1.0, 1, 1))) == [(2, "w")]


def test_a_call_goes_only_where_its_resources_fit() -> None:
    s = pool("cpu")
    s.handle(WorkerUp(0.0, "gpu", 1, {"gpu": 1.0}))
    assert sends(submit(s, 1, resources={"gpu": 1.0})) == [(1, "gpu")]
    assert sends(submit(s, 2, resources={"gpu": 1.0})) == []  # the gpu worker is busy: it waits
    assert sends(submit(s, 3)) == []  # strict order: nothing passes the waiting call
    assert sends(s.handle(Answered(1.0, 1, 1))) == [(2, "gpu"), (3, "cpu")]


@pytest.mark.parametrize(
    ("options", "match"),
    [({"priority": 11}, "train: priority must be an int from 0 to 10, not 11"), ({"priority": -1}, "priority must be an int from 0 to 10"),
     ({"timeout": 0}, "timeout must be a number of seconds above 0, not 0"),
     ({"deadline": -1.0}, "deadline must be"), ({"retries": -2}, "retries must be an int >= 0, not -2"), ({"priority": 5.5}, "priority must be an int")],
)
def test_bad_options_name_the_field(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CallSpec(1, label="train", **options)


def test_repr_and_counts() -> None:
    s = pool("w1")
    submit(s, 1)
    submit(s, 2)
    assert repr(s) == "<Scheduler calls=2 queued=1 running=1 workers=1>"


def measured(s: Scheduler, label: str, seconds: float, worker: str = "w1") -> None:
    """Run one call of ``label`` that takes ``seconds`` on an idle ``worker``."""
    task_id = 10_000 + len(s.durations.means) + int(seconds * 1e6)
    assert sends(submit(s, task_id, now=100.0, label=label)) == [(task_id, worker)]
    s.handle(Answered(100.0 + seconds, task_id, 1))


@pytest.mark.parametrize(("mean", "overhead", "calls"), [
    (0.00001, 0.0, MAX_AHEAD), (0.001, 0.0, 1 + round(BUDGET / 0.001)), (0.004, 0.0, 2),
    (0.001, 0.010, 11),  # enough to cover a remote engine's round trip
])
def test_how_far_ahead(mean, overhead, calls) -> None:
    assert ahead(mean, overhead) == calls


def test_short_calls_go_ahead_only_behind_short_calls_and_never_with_a_timeout() -> None:
    s = pool("w1")
    measured(s, "tiny", 0.0001)
    out = []
    for task_id in range(1, 100):
        out += submit(s, task_id, now=200.0, label="tiny")
    assert len(sends(out)) == ahead(s.durations.means["tiny"])  # a few ms of work held by the worker
    assert s.queued == 99 - ahead(s.durations.means["tiny"])
    assert submit(s, 500, now=200.0, label="tiny", priority=9, timeout=5.0) == []  # needs a real start

    s = pool("w1")
    measured(s, "tiny", 0.0001)
    assert sends(submit(s, 1, now=200.0, label="unknown")) == [(1, "w1")]
    assert submit(s, 2, now=200.0, label="tiny") == []  # nothing goes ahead of a call of unknown length
    measured_long = pool("w1")
    measured(measured_long, "long", 2 * SHORT)
    assert sends(submit(measured_long, 1, now=200.0, label="long")) == [(1, "w1")]
    assert submit(measured_long, 2, now=200.0, label="long") == []


def test_a_free_worker_is_taken_before_anything_goes_ahead() -> None:
    s = pool("w1", "w2")
    measured(s, "tiny", 0.0001)
    assert sends(submit(s, 1, now=200.0, label="tiny") + submit(s, 2, now=200.0, label="tiny")) == [
        (1, "w1"), (2, "w2")]


def test_the_kernels_own_process_only_when_opted_in_idle_and_without_a_timeout() -> None:
    s = pool("w1")
    s.handle(WorkerUp(0.0, "inprocess-0", 2, in_process=True))
    assert sends(submit(s, 1)) == [(1, "w1")]  # no Load yet: the machine's load is unknown
    s.handle(Answered(1.0, 1, 1))
    s.handle(Load(1.0, low=True))
    assert sends(submit(s, 2, now=1.0)) == [(2, "inprocess-0")]
    assert sends(submit(s, 3, now=1.0, timeout=1.0)) == [(3, "w1")]  # a timeout cannot be enforced there
    s.handle(Load(1.0, low=False))
    assert sends(submit(s, 4, now=1.0)) == []  # busy machine: the worker or the queue


def test_a_pinned_call_goes_to_its_worker_at_once_in_order() -> None:
    s = pool("w1", "w2")
    submit(s, 1)
    assert sends(submit(s, 2, pinned_to="w1")) == [(2, "w1")]  # behind call 1, on the worker holding the instance
    assert submit(s, 3, pinned_to="gone") == [Resolve(3, "lost", 0, "worker gone is gone")]
    assert s.handle(CancelAsked(1.0, 2)) == [AbortAttempt(2, 1, "w1", "cancelled"), Resolve(2, "cancelled", 1)]


def test_an_attempt_that_never_began_runs_elsewhere_at_no_cost() -> None:
    s = pool("w1", "w2")
    submit(s, 1)
    out = s.handle(Lost(1.0, 1, 1, "dropped before it began", started=False))
    assert sends(out) == [(1, "w1")]  # no retry asked, none needed: it never ran
    assert s.handle(Answered(2.0, 1, 2)) == [Resolve(1, "answered", 2)]


def test_closing_ends_the_calls_not_started_and_sends_nothing_more() -> None:
    s = pool("w1")
    submit(s, 1)
    submit(s, 2)
    assert s.handle(Closing(1.0)) == [Resolve(2, "closed", 0)]
    assert s.handle(Answered(2.0, 1, 1)) == [Resolve(1, "answered", 1)]
    assert submit(s, 3, now=3.0) == [Resolve(3, "closed", 0)]


def test_a_worker_is_sent_no_more_calls_than_it_may_still_run() -> None:
    s = Scheduler()
    s.handle(WorkerUp(0.0, "w1", 1, calls=2))
    s.handle(WorkerUp(0.0, "w2", 1))
    assert sends(submit(s, 1) + submit(s, 2)) == [(1, "w1"), (2, "w2")]
    assert sends(s.handle(Answered(1.0, 2, 1)) + submit(s, 3, now=1.0)) == [(3, "w2")]
    assert sends(s.handle(Answered(2.0, 1, 1)) + submit(s, 4, now=2.0)) == [(4, "w1")]
    assert sends(s.handle(Answered(3.0, 4, 1)) + submit(s, 5, now=3.0)) == []  # w1 ran its two


def test_calls_held_behind_a_call_that_runs_late_are_taken_back_and_run_elsewhere() -> None:
    s = pool("w1", "w2")
    measured(s, "f", 0.0001)  # f is short, as far as anyone knows
    assert sends(submit(s, 1, now=200.0, label="f")) == [(1, "w1")]  # it will take 3 s after all
    assert sends(submit(s, 2, now=200.0, label="f")) == [(2, "w2")]
    out = []
    for task_id in range(3, 13):
        out += submit(s, task_id, now=200.0, label="f")
    held_on_w1 = [t for t, w in sends(out) if w == "w1"]
    assert held_on_w1  # sent ahead behind call 1
    s.handle(Answered(200.001, 2, 1))  # w2 streams on
    wakeup = s.next_wakeup()
    assert wakeup is not None and wakeup <= 200.001 + LATE  # a look while calls wait ahead
    assert not any(isinstance(i, TakeBack) for i in s.handle(Tick(200.0 + LATE / 2)))  # not late yet
    late = 200.001 + late_after(s.durations.means["f"])
    out = s.handle(Tick(late))
    assert [i.task_id for i in out if isinstance(i, TakeBack) and i.worker_id == "w1"] == held_on_w1
    assert all(w != "w1" for _, w in sends(submit(s, 99, now=late, label="f")))  # nothing more goes ahead there
    queued = s.queued
    for task_id in held_on_w1:  # w1 confirms each drop: they wait for another worker, at no cost
        out = s.handle(Lost(late, task_id, 1, "dropped before it began", started=False))
        assert all(w != "w1" for _, w in sends(out))
    assert s.workers["w1"].running == {1: None}
    assert s.queued == queued + len(held_on_w1)
    assert s.calls[held_on_w1[0]].tries == 0  # never began: no retry was spent


def test_the_pools_fast_entries_decide_exactly_as_handle() -> None:
    """``submitted`` and ``answered`` (the pool's per-call path, with no stimulus built)
    return what ``handle`` returns for the same stimulus, step by step, over a random
    run that mixes priorities, projects, timeouts, short and long calls, retries and
    late answers."""
    rng = random.Random(11)
    by_handle, direct = pool("w1", ("w2", 2)), pool("w1", ("w2", 2))
    for s in (by_handle, direct):
        s.handle(WorkerUp(0.0, "w3", 1, overhead=0.001))
    running: list[tuple[int, int]] = []
    now = 0.0
    for task_id in range(1, 600):
        now += rng.choice((0.0001, 0.001, 0.03))
        if rng.random() < 0.55:
            spec = dict(priority=rng.randint(0, 10), label=rng.choice(("tiny", "tiny", "slow")),
                        project=rng.choice((None, None, "p")), timeout=rng.choice((None, None, 5.0)),
                        retries=rng.choice((0, 1)))
            a = by_handle.handle(Submitted(now, CallSpec(task_id, **spec)))  # type: ignore[arg-type]
            b = direct.submitted(now, CallSpec(task_id, **spec))  # type: ignore[arg-type]
        elif running:
            done_id, attempt = running.pop(rng.randrange(len(running)))
            retry, ran = rng.random() < 0.1, rng.choice((None, 0.0001, 0.01))
            a = by_handle.handle(Answered(now, done_id, attempt, retry, ran))
            b = direct.answered(now, done_id, attempt, retry, ran)
        else:
            a, b = by_handle.handle(Tick(now)), direct.handle(Tick(now))
        assert a == b, f"step {task_id}"
        running += [(i.task_id, i.attempt) for i in a if isinstance(i, Send)]
        if task_id % 50 == 0:
            a, b = by_handle.handle(Tick(now)), direct.handle(Tick(now))
            assert a == b
            running += [(i.task_id, i.attempt) for i in a if isinstance(i, Send)]
    assert by_handle.queued == direct.queued and by_handle.roster.running == direct.roster.running


def test_placement_is_a_pure_function_of_the_workers_records() -> None:
    a, b = WorkerRecord("a", 2, {}), WorkerRecord("b", 1, {})
    spec = CallSpec(1, label="f")
    assert place(spec, [a, b], False, None, 0) == (a, True)  # fewest running; a place is left after it
    a.running.update({10: None, 11: None})
    assert place(spec, [a, b], False, None, 0) == (b, False)  # the last free thread: the next needs no look
    b.running[12] = None
    assert place(spec, [a, b], False, None, 0) == (None, True)  # all busy, duration unknown: it waits
    assert place(spec, [a, b], False, 0.0001, ahead(0.0001)) == (b, True)  # short: ahead, to the least held
    b.unsure = 1  # b runs a call not known to be short: nothing goes ahead of it
    assert place(spec, [a, b], False, 0.0001, ahead(0.0001))[0] is a
    assert place(CallSpec(2, label="f", timeout=5.0), [a, b], False, 0.0001, ahead(0.0001)) == (None, True)
    local = WorkerRecord("kernel", 1, {}, in_process=True)
    assert place(spec, [local, a], True, None, 0)[0] is local  # opted in, and the machine is idle
    assert place(CallSpec(3, in_process=False), [local], True, None, 0)[0] is None
