"""A worker's life, as every executor lives it: its states and the moves between them.

::

    CREATING -> REGISTERING -> AVAILABLE <-> RUNNING
    AVAILABLE or RUNNING -> UNHEALTHY -> AVAILABLE (when it answers again)
    AVAILABLE, RUNNING or UNHEALTHY -> DRAINING
    any state but TERMINATED -> FAILED or TERMINATED;  FAILED -> TERMINATED

:meth:`.interface.Worker.set_state` refuses any other move with :class:`IllegalTransition`.
A worker takes calls only while :data:`ACCEPTING`; once :data:`CLOSED` it never will again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from kernel.errors import ExecutionError


class WorkerState(enum.StrEnum):
    CREATING = "creating"
    REGISTERING = "registering"
    AVAILABLE = "available"
    RUNNING = "running"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"
    TERMINATED = "terminated"


_S = WorkerState
TRANSITIONS: Mapping[WorkerState, frozenset[WorkerState]] = {
    _S.CREATING: frozenset({_S.REGISTERING, _S.FAILED, _S.TERMINATED}),
    _S.REGISTERING: frozenset({_S.AVAILABLE, _S.FAILED, _S.TERMINATED}),
    _S.AVAILABLE: frozenset({_S.RUNNING, _S.DRAINING, _S.UNHEALTHY, _S.FAILED, _S.TERMINATED}),
    _S.RUNNING: frozenset({_S.AVAILABLE, _S.DRAINING, _S.UNHEALTHY, _S.FAILED, _S.TERMINATED}),
    _S.UNHEALTHY: frozenset({_S.AVAILABLE, _S.DRAINING, _S.FAILED, _S.TERMINATED}),
    _S.DRAINING: frozenset({_S.FAILED, _S.TERMINATED}),
    _S.FAILED: frozenset({_S.TERMINATED}),
    _S.TERMINATED: frozenset(),
}
ACCEPTING = frozenset({_S.AVAILABLE, _S.RUNNING})
CLOSED = frozenset({_S.FAILED, _S.TERMINATED})


class IllegalTransition(ExecutionError):
    """An executor tried a state change the state machine does not allow."""
