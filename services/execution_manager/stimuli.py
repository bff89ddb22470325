"""What the scheduler (:mod:`.scheduler`) takes in and gives out: the call it is given,
the stimuli the pool reports, and the instructions the pool carries out. Plain frozen
values, so the scheduler's tests are tables of them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .policy import MAX_PRIORITY

# -- what a call is -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
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

    def __post_init__(self) -> None:
        if not isinstance(self.priority, int) or not 0 <= self.priority <= MAX_PRIORITY:
            raise ValueError(f"{self.label}: priority must be 0-{MAX_PRIORITY}, not {self.priority!r}")
        for name in ("timeout", "deadline"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{self.label}: {name} must be a number of seconds above 0, not {value!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"{self.label}: retries must be 0 or more, not {self.retries!r}")


# -- stimuli ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submitted:
    now: float
    call: CallSpec


@dataclass(frozen=True, slots=True)
class Cancelled:
    now: float
    task_id: int


@dataclass(frozen=True, slots=True)
class Answered:
    """An attempt answered: a result, or an exception the call raised (``retry``: the
    call's ``retry_on`` matches it). ``ran``: the seconds it ran, where the executor
    measured it (else the scheduler measures from its answers)."""

    now: float
    task_id: int
    attempt: int
    retry: bool = False
    ran: float | None = None


@dataclass(frozen=True, slots=True)
class Lost:
    """An attempt ended without an answer: its worker died or was stopped.
    ``started`` False: the executor knows it never began (it runs elsewhere, free)."""

    now: float
    task_id: int
    attempt: int
    reason: str
    started: bool = True


@dataclass(frozen=True, slots=True)
class WorkerUp:
    """A worker takes calls: ``width`` side by side; ``local``: in the kernel's own
    process (used only while :class:`Load` says the machine is idle, never for a call
    with a timeout); ``overhead``: seconds each call spends in transit; ``calls``: how
    many it may still be sent before it is replaced."""

    now: float
    worker_id: str
    width: int = 1
    resources: Mapping[str, float] = field(default_factory=dict)
    local: bool = False
    overhead: float = 0.0
    calls: int | None = None  # how many calls it may still be sent (maxTasksPerWorker); None: any


@dataclass(frozen=True, slots=True)
class WorkerGone:
    """The worker died, was stopped or was declared dead; what it ran is lost."""

    now: float
    worker_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerUnhealthy:
    now: float
    worker_id: str
    healthy: bool = False  # True: it came back


@dataclass(frozen=True, slots=True)
class WorkerDraining:
    now: float
    worker_id: str


@dataclass(frozen=True, slots=True)
class Load:
    """Whether the machine is idle enough for calls in the kernel's own process."""

    now: float
    low: bool


@dataclass(frozen=True, slots=True)
class ProjectLimit:
    now: float
    project: str
    limit: int | None  # None: no limit


@dataclass(frozen=True, slots=True)
class Closing:
    """The pool shuts down: calls not started end, nothing more is sent or retried."""

    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


Stimulus = (Submitted | Cancelled | Answered | Lost | WorkerUp | WorkerGone | WorkerUnhealthy | WorkerDraining
            | Load | ProjectLimit | Closing | Tick)


# -- instructions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    task_id: int
    attempt: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop a running attempt by force (its worker ends); it is given up already."""

    task_id: int
    attempt: int
    worker_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resolve:
    """The call is over: ``outcome`` is ``"answered"`` (deliver ``attempt``'s answer),
    ``"cancelled"``, ``"timeout"`` (ran past its timeout), ``"expired"`` (waited past its
    deadline), ``"closed"`` (the pool shut down before it started) or ``"lost"``
    (``reason`` says how its last attempt ended)."""

    task_id: int
    outcome: str
    attempt: int = 0
    reason: str = ""
    worker_id: str | None = None


@dataclass(frozen=True, slots=True)
class RetryAt:
    task_id: int
    at: float
    attempt: int  # the attempt that failed
    reason: str


@dataclass(frozen=True, slots=True)
class StopWorker:
    worker_id: str
    reason: str


Instruction = Send | Abort | Resolve | RetryAt | StopWorker
