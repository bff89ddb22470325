"""The job service: calls submitted from outside the kernel's process, kept in a store.

A job is acknowledged once its record is written; it then goes through the execution
manager like any call (priorities, projects, retries, timeouts). Its record says
``running`` before its call reaches a worker, so after the kernel dies a job that may
have run runs again only if it was submitted as retryable (``retries`` > 0); the others
are marked ``lost`` with the reason. Queued jobs run after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from pydantic.alias_generators import to_camel

from kernel.service import BaseService
from microkernel.services.execution_manager.wire.serialization import type_name  # loaded with the manager

from .model import Job, JobRequest, JobState, LogLine, json_size
from .settings import JobError, JobSettings

if TYPE_CHECKING:  # the rest loads when jobs are on (custom.api): a kernel without them starts as fast
    from microkernel.services.execution_manager.executors import Attempt
    from microkernel.services.execution_manager.pool import Progress

    from .api import JobApi
    from .store import JobStore
    from .tasks import TaskType

log = structlog.get_logger("jobs")
PURGE_EVERY = 3600.0
PROGRESS_EVERY = 1.0  # seconds between progress writes of one job


class _Watch:
    """Follows one job's call (a :class:`~microkernel.services.execution_manager.CallWatch`)."""

    __slots__ = ("job", "kept_at", "service")

    def __init__(self, service: JobService, job: Job) -> None:
        self.service, self.job = service, job
        self.kept_at = 0.0  # when progress was last written to the store

    def sent(self, attempt: Attempt) -> None:
        job = self.job
        job.state, job.attempts, job.worker = JobState.RUNNING, attempt.attempt, attempt.worker_id
        job.started = job.started or time.time()
        self.service.write(lambda store: store.started(job.id, attempt.attempt, attempt.worker_id))

    def logged(self, attempt: Attempt, level: str, message: str, fields: Mapping[str, Any]) -> None:
        self.service.add_log(self.job.id, level, message)

    def progress(self, update: Progress) -> None:
        job = self.job
        job.progress, job.message = update.fraction, update.message or None
        now = time.monotonic()
        if now - self.kept_at >= PROGRESS_EVERY:  # the store hears of it at most once a second
            self.kept_at = now
            self.service.write(lambda store: store.progressed(job.id, update.fraction, job.message))


class JobService(BaseService):
    """Jobs from outside the kernel (see the module docstring and README "Jobs")."""

    settings_model: ClassVar[type[JobSettings]] = JobSettings
    settings: JobSettings

    def __init__(self) -> None:
        self.store: JobStore | None = None
        self.api: JobApi | None = None
        self.address: str | None = None  # the API's, once it serves
        self.types: dict[str, TaskType] = {}
        self._running: dict[str, tuple[Job, asyncio.Future[Any]]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._closing = False
        self._purger: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._look = asyncio.Event()  # shared store: look for jobs now (one ended here, or one was told)
        self._unmetric: Callable[[], None] | None = None

    def __repr__(self) -> str:
        where = self.store.where if self.store else "off"
        return f"<JobService store={where} api={self.address or 'off'} running={len(self._running)}>"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.api is None:
            log.debug("jobs are off: no custom.api (kernel run turns it on)")
            return
        from .api import JobApi
        from .hookspecs import task_types
        from .metrics import JobCollector
        from .store import SqliteStore, StoreError

        self.types = task_types(self.kernel.pm)
        self.em = self.get_service("execution-manager")
        if s.store is not None:
            try:
                from .pgstore import PostgresStore  # psycopg: only when asked for
            except ImportError as exc:
                raise StoreError(f"custom.store names PostgreSQL, but {exc.name} is not installed: "
                                 "pip install 'microkernel-em[postgres]'") from None
            self.store = PostgresStore(s.store, s.folder(), orphan_after=s.orphan_after)
        else:
            self.store = SqliteStore(s.folder())
        try:
            self.store.beat()
            self._recover()
            self.api = JobApi(self, s.api, s.folder(), self.kernel.manifest_path(self.name))
            self.address = await self.api.start()
        except BaseException:
            self.store.close()
            raise
        self._unmetric = self.em.add_metrics(JobCollector(lambda: self._store().counts()))
        self._purger = asyncio.create_task(self._purge_now_and_then())
        if self.store.shared:
            loop = asyncio.get_running_loop()

            def heard(job_id: str) -> None:  # on the store's listening thread
                loop.call_soon_threadsafe(self._heard, job_id)

            self.store.listen(heard)
            self._poller = asyncio.create_task(self._poll())
        log.info("jobs serving", address=self.address, store=self.store.where, token_file=self.api.token_source)

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self._unmetric is not None:
            self._unmetric()
        for task in (self._purger, self._poller):
            if task is not None:
                task.cancel()
        if self.store is None:
            return
        # Calls not started stay queued in the store (they run after a restart); running
        # ones get the execution manager's drain time to finish and be recorded.
        waiting = []
        for job, fut in list(self._running.values()):
            if job.state == JobState.QUEUED:
                del self._running[job.id]  # so it stays queued in the store, not cancelled
                fut.cancel()
            else:
                waiting.append(fut)
        if waiting:
            await _until_done(waiting, self.em.settings.drain_timeout, self.kernel.hurry)
        self._closing = True
        self.store.close()

    # -- jobs -------------------------------------------------------------------------

    def submit(self, body: Any) -> tuple[Job, bool]:
        """Check ``body`` (a job request, JSON), keep the job and start it; returns the job
        and whether it is new (False: its idempotency key was known).

        :raises JobError: naming the field at fault; nothing is kept then.
        """
        store = self._store()
        request = JobRequest.parse(body)
        kind = self.types.get(request.type)
        if kind is None:
            raise JobError(f"unknown task type {request.type!r} (known: {', '.join(sorted(self.types))})",
                           field="type")
        if not kind.allowed(self.settings):
            raise JobError(f"{request.type} jobs are off in this kernel (custom.{to_camel(kind.setting or '')} of the "
                           "jobs service)",
                           field="type", status=403)
        task = kind.check(request.task)
        bound = getattr(kind, "bound", None)
        if bound is not None:  # a service's method: checked against the running kernel
            bound(self.kernel, task)
        job, new = store.add(Job.new(replace(request, task=task)))
        if new:
            log.debug("job submitted", job_id=job.id, type=job.type, project=job.project)
            if not store.shared or (self._room() and store.claim(job.id)):
                self._launch(job, kind)
            else:  # the first kernel with room takes it
                store.tell()
        return job, new

    def get(self, job_id: str) -> Job:
        """The job, as it is now.

        :raises JobError: no such job (404).
        """
        live = self._running.get(job_id)
        if live is not None:
            return live[0]
        job = self._store().get(job_id)
        if job is None:
            raise JobError(f"no job {job_id!r}", field="id", status=404)
        return job

    async def query(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
                    limit: int = 100, max_bytes: int | None = None) -> list[Job]:
        """Jobs, newest first, read in a thread (a page of large results takes a while):
        ``limit`` at most, and no more once ``max_bytes`` of them are read."""
        if state is not None and state not in JobState.__members__.values():
            raise JobError(f"state must be one of {', '.join(JobState)}, not {state!r}", field="state")
        jobs = await asyncio.to_thread(self._store().select, state=state, project=project, type=type, limit=limit,
                                       max_bytes=max_bytes)
        return [self._running[j.id][0] if j.id in self._running else j for j in jobs]

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs in the store by state, then by type: ``{"queued": {"function": 3}}``."""
        out: dict[str, dict[str, int]] = {state.value: {} for state in JobState}
        for (state, kind), n in self._store().counts().items():
            out.setdefault(state, {})[kind] = n
        return out

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: one not started never starts; a running one is stopped.

        :raises JobError: no such job (404), or it has finished (409).
        """
        job = self.get(job_id)
        if job.state.finished:
            raise JobError(f"job {job_id} has already finished ({job.state})", field="id", status=409)
        live = self._running.get(job_id)
        if live is not None:
            live[1].cancel()
        elif job.state == JobState.QUEUED and self._store().claim(job_id):  # queued in a shared store, untaken
            self._finish(job, JobState.CANCELLED, error="cancelled on request")
        else:
            raise JobError(f"job {job_id} runs on another kernel sharing the store: cancel it there", field="id",
                           status=409)
        return job

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it has finished, or as it is after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        while not job.state.finished:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event(job_id).wait(), self._slice(left))
            job = self.get(job_id)
        return job

    def logs(self, job_id: str, after: int = 0) -> list[LogLine]:
        self.get(job_id)
        return self._store().logs(job_id, after)

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[LogLine]:
        """Each log line after ``after`` as it is written, until the job has finished."""
        while True:
            event = self._event(job_id)
            lines = self.logs(job_id, after)
            for line in lines:
                yield line
                after = line.seq
            if not lines:
                if self.get(job_id).state.finished:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), self._slice(None))

    def add_log(self, job_id: str, level: str, line: str) -> None:
        self.write(lambda store: store.log(job_id, level, line, self.settings.max_log_bytes))
        self._notify(job_id)

    def write(self, change: Any) -> None:
        """Apply ``change(store)``; a store that fails is logged, never raised into a call's path."""
        if self.store is None or self._closing:
            return
        try:
            change(self.store)
        except Exception as exc:
            log.error("the job store failed a write", store=self.store.where, error=f"{type_name(exc)}: {exc}")

    # -- running ----------------------------------------------------------------------

    def _launch(self, job: Job, kind: TaskType) -> None:
        from microkernel.services.execution_manager import watching

        from .tasks import Launch

        options = {"priority": job.priority, "project": job.project, "timeout": job.timeout, "retries": job.retries}
        options = {k: v for k, v in options.items() if v is not None}
        watch = _Watch(self, job)
        launch = Launch(self.kernel, functools.partial(self.em.submit, **options), options)
        try:
            with watching(watch):
                fut = kind.start(launch, job.task)
        except Exception as exc:
            self._finish(job, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
            return
        fut = asyncio.ensure_future(fut)
        self._running[job.id] = (job, fut)
        if hasattr(fut, "on_progress"):
            fut.on_progress(watch.progress)
        fut.add_done_callback(functools.partial(self._done, job))

    def _done(self, job: Job, fut: asyncio.Future[Any]) -> None:
        if self._running.pop(job.id, None) is None:
            return  # left queued in the store at shutdown
        job.failures = [{"attempt": a.number, "worker": a.worker_id, "error": a.outcome}
                        for a in getattr(fut, "attempts", ())]
        if fut.cancelled():
            self._finish(job, JobState.CANCELLED, error="cancelled on request")
            return
        exc = fut.exception()
        if exc is not None:
            self._finish(job, JobState.FAILED, error=f"{type_name(exc)}: {exc}")
            return
        result = fut.result()
        try:
            _, size = json_size(result)
        except (TypeError, ValueError) as err:
            self._finish(job, JobState.FAILED, error=f"the result is not JSON: {err}")
            return
        limit = self.settings.max_result_bytes
        if size > limit:
            self._finish(job, JobState.FAILED, error=f"the result is {size:,} bytes of JSON, over the store's limit "
                                                     f"of {limit:,} (custom.maxResultBytes of the jobs service)")
            return
        self._finish(job, JobState.SUCCEEDED, result=result)

    def _finish(self, job: Job, state: JobState, *, result: Any = None, error: str | None = None) -> None:
        job.state, job.result, job.error, job.finished = state, result, error, time.time()
        self.write(lambda store: store.finished(job))
        if state == JobState.SUCCEEDED:
            log.debug("job finished", job_id=job.id, state=state.value)
        else:
            log.info("job finished", job_id=job.id, state=state.value, error=error)
        self._notify(job.id)
        self._look.set()  # room here: with a shared store, take the next job at once

    def _recover(self) -> None:
        """Take up what the last run left: queued jobs run; running ones run again only
        if retryable, else are lost."""
        store = self._store()
        for job in store.unfinished():
            if job.state == JobState.RUNNING and not job.retryable:
                self._finish(job, JobState.LOST, error="the kernel stopped while the job ran, and it was not "
                                                       "retryable (retries 0): it may or may not have run")
                continue
            kind = self.types.get(job.type)
            if kind is None:
                self._finish(job, JobState.FAILED, error=f"task type {job.type!r} is not installed any more")
                continue
            note = "running when the kernel stopped: run again (retryable)" if job.state == JobState.RUNNING \
                else "queued when the kernel stopped: run now"
            self.add_log(job.id, "warning", note)
            job.state = JobState.QUEUED
            log.info("job taken up again", job_id=job.id, reason=note)
            self._launch(job, kind)

    def _heard(self, job_id: str) -> None:
        """The shared store told: ``job_id`` finished in some kernel, or ("") a job waits."""
        if job_id:
            self._notify(job_id)
        else:
            self._look.set()

    def _room(self) -> int:
        """How many more jobs this kernel can start soon (its pool's queue is short). Jobs
        taken here and not started count as waiting even before they reach the pool (a
        task type may submit its call a turn later)."""
        pool = self.em.pool
        if pool is None:
            return 0
        waiting_here = sum(1 for job, _ in self._running.values() if job.state == JobState.QUEUED)
        most: int = max(1, self.em.settings.max_workers)
        waiting: int = max(pool.waiting, waiting_here)
        return max(0, most - waiting)

    async def _poll(self) -> None:
        """Shared store: say this kernel lives and take back dead kernels' jobs (every
        poll interval), and take queued jobs while there is room: every poll interval,
        and at once when a job ends here or another kernel tells of one."""
        store = self._store()
        interval = self.settings.poll_interval
        beaten = 0.0
        while True:
            self._look.clear()
            try:
                if time.monotonic() - beaten >= interval:
                    beaten = time.monotonic()
                    for job in store.beat():
                        log.warning("job lost with its kernel", job_id=job.id, error=job.error)
                while room := self._room():
                    taken = store.claim_queued(room)
                    for job in taken:
                        kind = self.types.get(job.type)
                        if kind is None:
                            self._finish(job, JobState.FAILED, error=f"task type {job.type!r} is not installed here")
                        else:
                            self._launch(job, kind)
                    if len(taken) < room:
                        break
            except Exception as exc:  # the server is away: say so, and look again later
                log.error("the job store failed", store=store.where, error=f"{type_name(exc)}: {exc}")
                await asyncio.sleep(interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look.wait(), interval)

    async def _purge_now_and_then(self) -> None:
        while True:
            self.write(lambda store: store.purge(time.time() - self.settings.retention))
            await asyncio.sleep(PURGE_EVERY)

    def _slice(self, left: float | None) -> float | None:
        """How long to wait for news of a job: in a shared store another kernel may run
        it, and only the store hears of that, so look again every poll interval."""
        if self.store is not None and self.store.shared:
            return self.settings.poll_interval if left is None else min(left, self.settings.poll_interval)
        return left

    def _event(self, job_id: str) -> asyncio.Event:
        event = self._changed.get(job_id)
        if event is None:
            event = self._changed[job_id] = asyncio.Event()
        return event

    def _notify(self, job_id: str) -> None:
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    def _store(self) -> JobStore:
        if self.store is None:
            raise JobError("jobs are off in this kernel: the jobs service has no custom.api", status=503)
        return self.store


async def _until_done(futures: list[asyncio.Future[Any]], timeout: float, hurry: asyncio.Event) -> None:
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
