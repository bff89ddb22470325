"""The job service: calls submitted from outside the kernel's process, kept in a store.

A job is acknowledged once its record is written; it then goes through the execution
manager like any call (priorities, projects, retries, timeouts). Its record says
``running`` before its call reaches a worker, so after the kernel dies a job that may
have run runs again only if it was submitted as retryable (``retries`` > 0); the others
are marked ``lost`` with the reason. Queued jobs run after a restart.

The service by role: this module is its lifecycle and the API the HTTP layer
(:mod:`.api`) and the commands call; :mod:`.runner` runs jobs and records how they end;
:mod:`.shared` takes part in a queue other kernels share; :mod:`.store` and :mod:`.sql`
keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from pydantic.alias_generators import to_camel

from kernel.service import BaseService
from microkernel.services.execution_manager.wire.serialization import type_name  # loaded with the manager

from .model import Job, JobRequest, JobState, LogLine, Page
from .settings import JobError, JobSettings

if TYPE_CHECKING:  # the rest loads when jobs are on (custom.api): a kernel without them starts as fast
    from .api import JobApi
    from .runner import Runner
    from .shared import SharedQueue
    from .store import JobStore
    from .tasks import TaskType

log = structlog.get_logger("jobs")
PURGE_EVERY = 3600.0


class JobService(BaseService):
    """Jobs from outside the kernel (see the module docstring and README "Jobs")."""

    settings_model: ClassVar[type[JobSettings]] = JobSettings
    settings: JobSettings

    def __init__(self) -> None:
        self.store: JobStore | None = None
        self.api: JobApi | None = None
        self.address: str | None = None  # the API's, once it serves
        self.types: dict[str, TaskType] = {}
        self.em: Any = None  # the execution manager, once started
        self.runner: Runner | None = None  # the jobs running here (with custom.api)
        self.shared: SharedQueue | None = None  # with a store other kernels share
        self._changed: dict[str, asyncio.Event] = {}
        self._closing = False
        self._purger: asyncio.Task[None] | None = None
        self._unmetric: Callable[[], None] | None = None

    def __repr__(self) -> str:
        where = self.store.where if self.store else "off"
        running = len(self.runner) if self.runner else 0
        return f"<JobService store={where} api={self.address or 'off'} running={running}>"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.api is None:
            log.debug("jobs are off: no custom.api (kernel run turns it on)")
            return
        from .api import JobApi
        from .hookspecs import task_types
        from .metrics import JobCollector
        from .runner import Runner
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
        self.runner = Runner(self.kernel, self.em, s, self.types, self)
        try:
            self.store.beat()
            self.runner.recover(self.store)
            self.api = JobApi(self, s.api, s.folder(), self.kernel.manifest_path(self.name))
            self.address = await self.api.start()
        except BaseException:
            self.store.close()
            raise
        self._unmetric = self.em.add_metrics(JobCollector(lambda: self._store().counts()))
        self._purger = asyncio.create_task(self._purge_now_and_then())
        if self.store.shared:
            from .shared import SharedQueue

            self.shared = SharedQueue(self.store, self.runner, s.poll_interval, self.notify)
            self.shared.start()
        log.info("jobs serving", address=self.address, store=self.store.where, token_file=self.api.token_source)

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self._unmetric is not None:
            self._unmetric()
        if self._purger is not None:
            self._purger.cancel()
        if self.shared is not None:
            self.shared.stop()
        if self.store is None:
            return
        if self.runner is not None:
            await self.runner.stop(self.kernel.hurry)
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
        asked = Job.new(replace(request, task=task, name=request.name or kind.label(task)))
        job, new = store.add(asked)
        if not new and job.request() != asked.request():
            raise JobError(f"the idempotency key {request.key!r} was used for another request (job {job.id}): "
                           "send that request again, or use a new key", field="key", status=409)
        if new:
            log.debug("job submitted", job_id=job.id, type=job.type, project=job.project)
            if self.shared is None or self.shared.offer(job.id):
                self._runner().launch(job, kind)
        return job, new

    def get(self, job_id: str) -> Job:
        """The job, as it is now.

        :raises JobError: no such job (404).
        """
        live = self.runner.live(job_id) if self.runner else None
        if live is not None:
            return live
        job = self._store().get(job_id)
        if job is None:
            raise JobError(f"no job {job_id!r}", field="id", status=404)
        return job

    async def query(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
                    limit: int = 100, max_bytes: int | None = None, after: str | None = None) -> Page:
        """Jobs, newest first, read in a thread (a page of large results takes a while):
        ``limit`` at most, and no more once ``max_bytes`` of them are read; with ``after``
        (a job id), those older than it (the next page)."""
        if state is not None and state not in JobState.__members__.values():
            raise JobError(f"state must be one of {', '.join(JobState)}, not {state!r}", field="state")
        jobs = await asyncio.to_thread(self._store().select, state=state, project=project, type=type, limit=limit,
                                       max_bytes=max_bytes, after=after)
        runner = self._runner()
        page = Page(runner.live(j.id) or j for j in jobs)
        page.next = jobs.next
        return page

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
        runner = self._runner()
        if runner.cancel(job_id):
            pass
        elif job.state == JobState.QUEUED and self._store().claim(job_id):  # queued in a shared store, untaken
            runner.finish(job, JobState.CANCELLED, error="cancelled on request")
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
        self.notify(job_id)

    def write(self, change: Callable[[JobStore], object]) -> None:
        """Apply ``change(store)``; a store that fails is logged, never raised into a call's path."""
        if self.store is None or self._closing:
            return
        try:
            change(self.store)
        except Exception as exc:
            log.error("the job store failed a write", store=self.store.where, error=f"{type_name(exc)}: {exc}")

    # -- news ---------------------------------------------------------------------------

    async def _purge_now_and_then(self) -> None:
        while True:
            self.write(lambda store: store.purge(time.time() - self.settings.retention))
            await asyncio.sleep(PURGE_EVERY)

    def _slice(self, left: float | None) -> float | None:
        """How long to wait for news of a job (see :meth:`.shared.SharedQueue.slice`)."""
        return self.shared.slice(left) if self.shared is not None else left

    def _event(self, job_id: str) -> asyncio.Event:
        event = self._changed.get(job_id)
        if event is None:
            event = self._changed[job_id] = asyncio.Event()
        return event

    def notify(self, job_id: str) -> None:
        """The job changed: wake those waiting on it."""
        event = self._changed.pop(job_id, None)
        if event is not None:
            event.set()

    def room_made(self) -> None:
        """A job ended here: with a shared store, take the next one at once."""
        if self.shared is not None:
            self.shared.room_made()

    def _store(self) -> JobStore:
        if self.store is None:
            raise JobError("jobs are off in this kernel: the jobs service has no custom.api", status=503)
        return self.store

    def _runner(self) -> Runner:
        self._store()  # jobs are on: the runner starts with the store
        assert self.runner is not None
        return self.runner
