"""What the scheduler (:mod:`.scheduler`) takes in and gives out: the call it is given,
the stimuli the pool reports, and the instructions the pool carries out. Plain values,
compared by value, so the scheduler's tests are tables of them. (Not frozen: a frozen
dataclass costs several times as much to make, and a few are made per call; nothing
changes one after it is made.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .queue import MAX_PRIORITY

# -- what a call is -----------------------------------------------------------------


@dataclass(slots=True)
class CallSpec:
    """A call as submitted: its identity and its delivery options."""

    task_id: int
    priority: int = 5
    project: str | None = None
    resources: Mapping[str, float] | None = None  # what it needs of a worker (None: anything)
    timeout: float | None = None  # seconds from its start on a worker
    deadline: float | None = None  # seconds it may wait in the queue
    retries: int = 0  # further attempts allowed after one that may have started ended badly
    label: str = "call"  # what it runs; durations are measured per label
    pinned_to: str | None = None  # a pinned instance's call: that worker, in order, no queue
    in_process: bool = True  # may run in the kernel's own process (where that is on at all)

    def __post_init__(self) -> None:
        priority, retries = self.priority, self.retries
        if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
            raise ValueError(f"{self.label}: priority must be an int from 0 to {MAX_PRIORITY}, not {priority!r}")
        if self.timeout is not None or self.deadline is not None:
            for name in ("timeout", "deadline"):
                value = getattr(self, name)
                if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                          or not value > 0):
                    raise ValueError(f"{self.label}: {name} must be a number of seconds above 0, not {value!r}")
        if type(retries) is not int or retries < 0:
            raise ValueError(f"{self.label}: retries must be an int >= 0, not {retries!r}")


# -- stimuli ------------------------------------------------------------------------


@dataclass(slots=True)
class Submitted:
    now: float
    call: CallSpec


@dataclass(slots=True)
class CancelAsked:
    """The call is to end: its caller cancelled it (the future's ``cancel()``), or the
    pool gave it up (no worker can start). Not started, it never starts; running, it
    is stopped by force."""

    now: float
    task_id: int


@dataclass(slots=True)
class Answered:
    """An attempt answered: a result, or an exception the call raised (``retry``: the
    call's ``retry_on`` matches it). ``ran``: the seconds it ran, where the worker
    measured it (else the scheduler measures from its answers)."""

    now: float
    task_id: int
    attempt: int
    retry: bool = False
    ran: float | None = None


@dataclass(slots=True)
class Lost:
    """An attempt ended without an answer: its worker died or was stopped.
    ``started`` False: the worker knows it never began (it runs elsewhere, free)."""

    now: float
    task_id: int
    attempt: int
    reason: str
    started: bool = True


@dataclass(slots=True)
class WorkerUp:
    """A worker takes calls: ``width`` side by side; ``local``: in the kernel's own
    process (used only while :class:`Load` says the machine is idle, never for a call
    with a timeout); ``overhead``: seconds each call spends in transit; ``calls``: how
    many it may still be sent before it is replaced."""

    now: float
    worker_id: str
    width: int = 1
    resources: Mapping[str, float] = field(default_factory=dict)
    in_process: bool = False
    overhead: float = 0.0
    calls: int | None = None  # how many calls it may still be sent (maxTasksPerWorker); None: any


@dataclass(slots=True)
class WorkerGone:
    """The worker died, was stopped or was declared dead; what it ran is lost."""

    now: float
    worker_id: str
    reason: str


@dataclass(slots=True)
class WorkerUnhealthy:
    now: float
    worker_id: str
    healthy: bool = False  # True: it came back


@dataclass(slots=True)
class WorkerDraining:
    now: float
    worker_id: str


@dataclass(slots=True)
class Load:
    """Whether the machine is idle enough for calls in the kernel's own process."""

    now: float
    low: bool


@dataclass(slots=True)
class ProjectLimit:
    now: float
    project: str
    limit: int | None  # None: no limit


@dataclass(slots=True)
class Closing:
    """The pool shuts down: calls not started end, nothing more is sent or retried."""

    now: float


@dataclass(slots=True)
class Tick:
    now: float


Stimulus = (Submitted | CancelAsked | Answered | Lost | WorkerUp | WorkerGone | WorkerUnhealthy | WorkerDraining
            | Load | ProjectLimit | Closing | Tick)


# -- instructions ---------------------------------------------------------------------


@dataclass(slots=True)
class Send:
    task_id: int
    attempt: int
    worker_id: str


class Outcome(StrEnum):
    """How a call ended (:class:`Resolve`)."""

    ANSWERED = "answered"  # deliver the attempt's answer
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"  # ran past its timeout
    EXPIRED = "expired"  # waited past its deadline
    CLOSED = "closed"  # the pool shut down before it started
    LOST = "lost"  # its last attempt ended with its worker (``reason`` says how)


class AbortReason(StrEnum):
    """Why a running attempt is stopped by force (:class:`AbortAttempt`)."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


@dataclass(slots=True)
class AbortAttempt:
    """Stop a running attempt by force (its worker ends); it is given up already."""

    task_id: int
    attempt: int
    worker_id: str
    reason: AbortReason


@dataclass(slots=True)
class Resolve:
    """The call is over, as ``outcome`` says (``ANSWERED``: deliver ``attempt``'s answer;
    ``LOST``: ``reason`` says how its last attempt ended)."""

    task_id: int
    outcome: Outcome
    attempt: int = 0
    reason: str = ""
    worker_id: str | None = None
    gave_up: bool = field(default=False, compare=False)  # "lost" after maxCallDeaths deaths


@dataclass(slots=True)
class RetryAt:
    task_id: int
    at: float
    attempt: int  # the attempt that failed
    reason: str


@dataclass(slots=True)
class TakeBack:
    """Ask the worker to drop an attempt sent ahead that has not begun (the call before it
    runs late); a drop it confirms comes back as ``Lost(started=False)``."""

    task_id: int
    attempt: int
    worker_id: str


@dataclass(slots=True)
class StartWorker:
    """Start ``count`` workers, saying why (the rule that fired, for the log and stats)."""

    count: int
    reason: str


@dataclass(slots=True)
class StopWorker:
    """Stop a worker, saying why: with ``drain``, between calls (it takes no new one,
    finishes what it holds and is replaced); without, what it runs is stopped now and
    fails with ``reason``, under its retry policy."""

    worker_id: str
    reason: str
    drain: bool = True


@dataclass(slots=True)
class WakeAt:
    """A :class:`Tick` is needed by ``at`` (a deadline, a timeout, a retry, or a call sent
    ahead to watch), sooner than any asked for before; the last instruction of its batch."""

    at: float


Instruction = Send | AbortAttempt | Resolve | RetryAt | TakeBack | StartWorker | StopWorker | WakeAt
