"""What an operator does to a running pool, by id: drain, stop or restart a worker,
revoke a call. Each checks at once (an unknown id, a conflict) and then waits for the
action, or carries it out in the background (``..._soon``: what the HTTP API answers
202 for). The pool's call path (:mod:`.pool`) and its workers (:mod:`.fleet`) do the
work; this module is the operator's door to them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from kernel.errors import ExecutionError

from ..errors import CallRevokedError, MessageError, WorkerConflictError
from ..scheduling.stimuli import CancelAsked

if TYPE_CHECKING:
    from ..scheduling import Scheduler
    from ..scheduling.stimuli import Stimulus
    from .admission import Admission
    from .fleet import Fleet
    from .handles import CallFuture
    from .tally import Tally

log = structlog.get_logger("execution-manager")
ALL = "*"  # every worker of the pool, for send()
MAX_MESSAGE = 64 * 1024  # bytes of JSON an operator's message may hold


class Operations:
    """The operator's actions on one pool (``pool.operations``)."""

    def __init__(self, fleet: Fleet, tasks: dict[int, CallFuture], admission: Admission, sched: Scheduler,
                 tally: Tally, feed: Callable[[Stimulus], None]) -> None:
        self._fleet = fleet
        self._tasks = tasks  # the pool's calls by task id (the same dict)
        self._admission = admission
        self._sched = sched
        self._tally = tally
        self._feed = feed

    async def retire(self, worker_id: str, reason: str = "retired", *, drain: bool = True) -> None:
        """Move the worker's pinned instances away, then drain and stop it (without
        ``drain``: stop it now; what it runs fails with WorkerCrashedError, or is retried).

        :raises LookupError: no such worker (the message lists the workers).
        """
        await self._fleet.retire(worker_id, reason, drain=drain)

    def retire_soon(self, worker_id: str, reason: str, *, drain: bool = True) -> None:
        """Start retiring ``worker_id`` (see :meth:`retire`) without waiting for it.

        :raises LookupError: no such worker (the message lists the workers).
        """
        self._fleet.get(worker_id)  # (one leaving already goes on leaving)
        self._fleet.leave_soon(worker_id, reason, drain=drain)

    async def restart(self, worker_id: str, reason: str = "restarted on request") -> None:
        """See :meth:`.fleet.Fleet.begin_restart`."""
        await self._fleet.begin_restart(worker_id, reason)

    def restart_soon(self, worker_id: str, reason: str = "restarted on request") -> None:
        """Start restarting ``worker_id`` (checked now, carried out in the background).

        :raises LookupError: no such worker.
        :raises WorkerConflictError: see :meth:`.fleet.Fleet.begin_restart`.
        """
        self._fleet.background.spawn(self._fleet.begin_restart(worker_id, reason))

    async def send(self, target: str, message: Any, timeout: float = 5.0) -> dict[str, list[Any] | BaseException]:
        """Send ``message`` (JSON) to the instances pinned on worker ``target`` (or
        :data:`ALL` workers): ``{worker_id: [each instance's reply, or a MessageError,
        in pin order]}``, or for a worker that could not answer, the error (a
        ``TimeoutError`` past ``timeout`` seconds, a ``WorkerConflictError`` for a kind
        of worker that takes no messages, a ``WorkerCrashedError``).

        :raises LookupError: no such worker.
        :raises ValueError: the message is not JSON, or over 64 KiB of it.
        """
        try:
            payload = json.dumps(message).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a message is JSON: {exc}") from None
        if len(payload) > MAX_MESSAGE:
            raise ValueError(f"a message is {MAX_MESSAGE:,} bytes of JSON at most, not {len(payload):,}")
        workers = self._fleet.workers
        ids = sorted(workers) if target == ALL else [self._fleet.get(target).id]

        async def one(worker_id: str) -> list[Any] | BaseException:
            worker = workers.get(worker_id)
            if worker is None:
                return LookupError(f"worker {worker_id} left before the message reached it")
            try:
                replies = await asyncio.wait_for(worker.backend.tell(payload), timeout)
            except TimeoutError:
                return TimeoutError(f"worker {worker_id} did not answer within {timeout:g} s")
            except ExecutionError as exc:
                return exc
            return [json.loads(text) if ok else MessageError(f"worker {worker_id}: {text}") for ok, text in replies]

        log.info("message sent", target=target, bytes=len(payload))
        return dict(zip(ids, await asyncio.gather(*(one(w) for w in ids)), strict=True))

    def revoke(self, task_id: int, reason: str = "revoked on request") -> str:
        """Revoke a call by its task id: a queued or held one never runs, a running one is
        stopped (its worker replaced); it is never retried, and fails with
        :class:`CallRevokedError`. Returns where it was ("held", "queued" or "running").

        :raises LookupError: no call of that task id is waiting or running.
        :raises WorkerConflictError: it is a pinned instance's call (stopping it would
            lose the instance: release the instance instead).
        """
        fut = self._tasks.get(task_id)
        if fut is None or fut.done() or fut.revoked is not None:
            raise LookupError(f"no call with task id {task_id} is waiting or running")
        if fut.spec.pinned_to is not None:
            raise WorkerConflictError(f"{fut.describe()} runs on a pinned instance's worker ({fut.spec.pinned_to}): "
                                      "revoking it would lose the instance; release the instance instead")
        held = self._admission.withdraw(fut)
        where = "held" if held else "running" if self._sched.running_on(task_id) is not None else "queued"
        # The pool's resolution of the call reads this: its caller hears why, not CancelledError.
        fut.revoked = f"was revoked {'and stopped' if where == 'running' else 'before it ran'}: {reason}"
        log.info("call revoked", task_id=task_id, call=fut.spec.label, reason=reason, where=where)
        if held:
            self._tasks.pop(task_id, None)
            self._tally.fail(fut, CallRevokedError(f"{fut.describe()} {fut.revoked}"))
        else:
            self._feed(CancelAsked(self._fleet.loop.time(), task_id))
        return where
