"""Running jobs: each job's call goes through the execution manager like any call
(priorities, projects, retries, timeouts), and how it ends is recorded.

:class:`Runner` holds the jobs this kernel runs now; the service (:mod:`.service`)
hands it jobs and reads them, through the :class:`Journal` it is given: where job
records, log lines and news go.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from microkernel.services.execution_manager.errors import CallRevokedError
from microkernel.services.execution_manager.pool import CallFuture  # loaded with the manager (jobs are on)
from microkernel.services.execution_manager.wire.serialization import type_name

from .model import Job, JobState, json_size

if TYPE_CHECKING:
    from kernel.interfaces import ServiceHost
    from microkernel.services.execution_manager.executors import Attempt
    from microkernel.services.execution_manager.pool import Progress

    from .settings import JobSettings
    from .store import JobStore
    from .tasks import TaskType

log = structlog.get_logger("jobs")
PROGRESS_EVERY = 1.0  # seconds between progress writes of one job


class Journal(Protocol):
    """Where the runner records jobs (the job service)."""

    def write(self, change: Callable[[JobStore], object]) -> None:
        """Apply ``change(store)``; a store that fails is logged, never raised."""

    def add_log(self, job_id: str, level: str, line: str) -> None: ...

    def notify(self, job_id: str) -> None:
        """The job changed: wake those waiting on it."""

    def room_made(self) -> None:
        """A job ended here: a shared store's next job may be taken now."""


class _Watch:
    """Follows one job's call (a :class:`~microkernel.services.execution_manager.executors.CallWatch`)."""

    __slots__ = ("job", "journal", "kept_at")

    def __init__(self, journal: Journal, job: Job) -> None:
        self.journal, self.job = journal, job
        self.kept_at = 0.0  # when progress was last written to the store

    def sent(self, attempt: Attempt) -> None:
        job = self.job
        job.state, job.attempts, job.worker = JobState.RUNNING, attempt.attempt, attempt.worker_id
        job.started = job.started or time.time()
        self.journal.write(lambda store: store.started(job.id, attempt.attempt, attempt.worker_id))

    def logged(self, attempt: Attempt, level: str, message: str, fields: Mapping[str, Any]) -> None:
        self.journal.add_log(self.job.id, level, message)

    def progress(self, update: Progress) -> None:
        job = self.job
        job.progress, job.message = update.fraction, update.message or None
        now = time.monotonic()
        if now - self.kept_at >= PROGRESS_EVERY:  # the store hears of it at most once a second
            self.kept_at = now
            self.journal.write(lambda store: store.progressed(job.id, update.fraction, job.message))


class Runner:
    """The jobs this kernel runs now (see the module docstring)."""

    def __init__(self, kernel: ServiceHost, em: Any, settings: JobSettings, types: Mapping[str, TaskType],
                 journal: Journal) -> None:
        self.kernel, self.em, self.settings, self.types, self.journal = kernel, em, settings, types, journal
        self.running: dict[str, tuple[Job, asyncio.Future[Any]]] = {}

    def __len__(self) -> int:
        return len(self.running)

    def live(self, job_id: str) -> Job | None:
        """The job as it is now, if it runs here."""
        entry = self.running.get(job_id)
        return entry[0] if entry is not None else None

    def cancel(self, job_id: str) -> bool:
        """Cancel the job if it runs here; False if it does not."""
        entry = self.running.get(job_id)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def launch(self, job: Job, kind: TaskType | None = None) -> None:
        """Start ``job``'s call (its task type ``kind``; looked up when not given)."""
        from microkernel.services.execution_manager.pool import watching

        from .tasks import Launch

        kind = kind or self.types.get(job.type)
        if kind is None:
            self.finish(job, JobState.FAILED, error=f"task type {job.type!r} is not installed here")
            return
        options = {"priority": job.priority, "project": job.project, "timeout": job.timeout, "retries": job.retries}
        options = {k: v for k, v in options.items() if v is not None}
        watch = _Watch(self.journal, job)
        launch = Launch(self.kernel, functools.partial(self.em.submit, **options), options)
        try:
            # Its call keeps the job id among its caller's variables: every line about it says the job.
            with watching(watch), structlog.contextvars.bound_contextvars(job_id=job.id):
                fut = kind.start(launch, job.task)
        except Exception as exc:
            self.finish(job, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
            return
        fut = asyncio.ensure_future(fut)
        self.running[job.id] = (job, fut)
        if isinstance(fut, CallFuture):  # a call of the pool's (a task type may await others)
            fut.on_progress(watch.progress)
        fut.add_done_callback(functools.partial(self._done, job))

    def _done(self, job: Job, fut: asyncio.Future[Any]) -> None:
        if self.running.pop(job.id, None) is None:
            return  # left queued in the store at shutdown
        failed = fut.attempts if isinstance(fut, CallFuture) else []
        job.failures = [{"attempt": a.number, "worker": a.worker_id, "error": a.outcome} for a in failed]
        if fut.cancelled():
            self.finish(job, JobState.CANCELLED, error="cancelled on request")
            return
        exc = fut.exception()
        if isinstance(exc, CallRevokedError):  # its call was revoked by task id: the job is cancelled
            self.finish(job, JobState.CANCELLED, error=str(exc))
            return
        if exc is not None:
            self.finish(job, JobState.FAILED, error=f"{type_name(exc)}: {exc}")
            return
        result = fut.result()
        try:
            _, size = json_size(result)
        except (TypeError, ValueError) as err:
            self.finish(job, JobState.FAILED, error=f"the result is not JSON: {err}")
            return
        limit = self.settings.max_result_bytes
        if size > limit:
            self.finish(job, JobState.FAILED, error=f"the result is {size:,} bytes of JSON, over the store's limit "
                                                    f"of {limit:,} (custom.maxResultBytes of the jobs service)")
            return
        self.finish(job, JobState.SUCCEEDED, result=result)

    def finish(self, job: Job, state: JobState, *, result: Any = None, error: str | None = None) -> None:
        """Record how ``job`` ended, and say so."""
        job.state, job.result, job.error, job.finished = state, result, error, time.time()
        self.journal.write(lambda store: store.finished(job))
        if state == JobState.SUCCEEDED:
            log.debug("job finished", job_id=job.id, state=state.value)
        else:
            log.info("job finished", job_id=job.id, state=state.value, error=error)
        self.journal.notify(job.id)
        self.journal.room_made()

    def recover(self, store: JobStore) -> None:
        """Take up what the last run left: queued jobs run; running ones run again only
        if retryable, else are lost."""
        for job in store.unfinished():
            if job.state == JobState.RUNNING and not job.retryable:
                self.finish(job, JobState.LOST, error="the kernel stopped while the job ran, and it was not "
                                                      "retryable (retries 0): it may or may not have run")
                continue
            kind = self.types.get(job.type)
            if kind is None:
                self.finish(job, JobState.FAILED, error=f"task type {job.type!r} is not installed any more")
                continue
            note = "running when the kernel stopped: run again (retryable)" if job.state == JobState.RUNNING \
                else "queued when the kernel stopped: run now"
            self.journal.add_log(job.id, "warning", note)
            job.state = JobState.QUEUED
            log.info("job taken up again", job_id=job.id, reason=note)
            self.launch(job, kind)

    def room(self) -> int:
        """How many more jobs this kernel can start soon (its pool's queue is short). Jobs
        taken here and not started count as waiting even before they reach the pool (a
        task type may submit its call a turn later)."""
        pool = self.em.pool
        if pool is None:
            return 0
        waiting_here = sum(1 for job, _ in self.running.values() if job.state == JobState.QUEUED)
        most: int = max(1, self.em.settings.max_workers)
        waiting: int = max(pool.waiting, waiting_here)
        return max(0, most - waiting)

    async def stop(self, hurry: asyncio.Event) -> None:
        """Calls not started stay queued in the store (they run after a restart); running
        ones get the execution manager's drain time to finish and be recorded."""
        waiting = []
        for job, fut in list(self.running.values()):
            if job.state == JobState.QUEUED:
                del self.running[job.id]  # so it stays queued in the store, not cancelled
                fut.cancel()
            else:
                waiting.append(fut)
        if waiting:
            await until_done(waiting, self.em.settings.drain_timeout, hurry)


async def until_done(futures: list[asyncio.Future[Any]], timeout: float, hurry: asyncio.Event) -> None:
    """Wait for ``futures`` up to ``timeout`` seconds, or until ``hurry`` is set (a second
    Ctrl-C, or the kernel's stop deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    hurried = asyncio.ensure_future(hurry.wait())
    pending: set[asyncio.Future[Any]] = set(futures)
    try:
        while pending and not hurried.done() and (remaining := deadline - loop.time()) > 0:
            _, pending = await asyncio.wait(pending | {hurried}, timeout=remaining,
                                            return_when=asyncio.FIRST_COMPLETED)
            pending.discard(hurried)
    finally:
        hurried.cancel()
