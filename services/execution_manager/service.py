"""The execution manager service: the public API over the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from kernel.decorator import options_for
from kernel.errors import ExecutionError
from kernel.plugins import registered
from kernel.service import BaseService

from .errors import QueueFullError
from .events import Callback, EventBus
from .executors import NodeHost, NodeListener
from .executors.runtime import run_chunk
from .hookspecs import executor_types, node_transports
from .monitoring import History, Monitor, Stats, WorkerStats
from .pool import ALL, CallFuture, CallTraffic, PinTable, Route, WorkerPool
from .scheduling import CallSpec, chunk_size
from .settings import HttpSettings, Settings
from .wire import protocol as p
from .wire.serialization import dumps_call

if TYPE_CHECKING:
    from .monitoring import WebServer

log = structlog.get_logger("execution-manager")
DEFAULT_PRIORITY = 5


def _label(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


class ExecutionManager(BaseService):
    """Places calls on a pool of executors; see DESIGN.md section 4 and the README."""

    settings_model: ClassVar[type[Settings]] = Settings
    settings: Settings

    def __init__(self) -> None:
        self.pool: WorkerPool | None = None
        self._pins: PinTable | None = None
        self.events = EventBus()
        self.monitor: Monitor | None = None
        self._watch: asyncio.Task[None] | None = None
        self.listener: NodeListener | None = None
        self.traffic: CallTraffic | None = None
        self.nodes_address: str | None = None  # where remote nodes connect (custom.nodes)
        self.history: History | None = None  # exits, failures, scaling, timings (with custom.http)
        self.web: WebServer | None = None
        self.http_address: str | None = None  # the dashboard (custom.http)

    def __repr__(self) -> str:
        return f"<ExecutionManager {self.pool!r}>"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        registry = executor_types(self.kernel.pm)
        factory = registered(registry, s.node_type, "custom.nodeType", "node type")
        hook = self.kernel.hook.kernel_event
        if hook.get_hookimpls():
            self.events.hook = lambda e, payload: hook(kernel=self.kernel, event=e, payload=payload)
        self.traffic = CallTraffic(self.kernel, self.get_stats)
        if s.http is not None:  # before the first worker starts, so it is counted
            self.history = History(self.events)
        self.pool = WorkerPool(s, factory, self.events, in_process_factory=registry.get("inmemory"), host=self.traffic,
                               timings=self.history.timings if self.history else None)
        self._pins = PinTable(self.pool, self.events, self.call_method)
        await self.pool.start()
        if s.nodes is not None:
            try:
                await self._listen(s.nodes)
            except BaseException:
                await self.pool.stop()
                raise
        self.monitor = Monitor(self.pool)
        if s.http is not None:
            try:
                await self._serve_http(s.http)
            except BaseException:
                await self.stop()
                raise
        self._watch = asyncio.get_running_loop().create_task(self.monitor.run())
        log.info("execution manager started", node_type=s.node_type, min_workers=s.min_workers,
                 max_workers=s.max_workers, in_process=s.in_process)

    async def _listen(self, settings: Mapping[str, Any]) -> None:
        name = settings.get("transport", "websocket")
        transport = registered(node_transports(self.kernel.pm), name, "custom.nodes.transport", "node transport")
        listener: NodeListener = transport.listener(settings, self.kernel.manifest_path(self.name))
        host: NodeHost = self._pool  # (checked here: the registry's transports are not typed)
        self.nodes_address = await listener.start(host)
        self.listener = listener

    async def _serve_http(self, settings: HttpSettings) -> None:
        from .monitoring import WebServer  # aiohttp only when the dashboard is on

        assert self.history is not None
        self.web = WebServer(self, settings, self.history)
        self.http_address = await self.web.start()

    async def stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self.listener is not None:
            self.listener.stop_accepting()
        if self.pool is not None:
            await self.pool.stop(hurry=self.kernel.hurry)
        if self.listener is not None:
            await self.listener.stop()

    @property
    def _pool(self) -> WorkerPool:
        if self.pool is None:
            raise ExecutionError("the execution manager is not started")
        return self.pool

    # -- calls ------------------------------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, priority: int = DEFAULT_PRIORITY,
        project: str | None = None, retries: int = 0, retry_on: tuple[type[BaseException], ...] = (),
        timeout: float | None = None, soft_timeout: float | None = None, deadline: float | None = None,
        resources: Mapping[str, float] | None = None, block: bool = True, **kwargs: Any,
    ) -> CallFuture:
        """Run ``fn(*args, **kwargs)`` on the pool; await the returned future for its result.

        The call is placed at once (like Dask's ``client.submit``); ``fn`` is any
        importable or cloudpickle-able callable. ``retries``: how many times to run it
        again when its worker dies (:class:`WorkerCrashedError`), with exponential
        backoff and jitter; calls are not retried by default (at most once).
        ``retry_on``: exception types raised by the call that are worth retrying too.
        A call that keeps killing workers is given up after ``maxCallDeaths`` (3).
        ``timeout``: seconds for the whole call; past it the call is stopped (its worker
        ended and replaced, if it was running) and :class:`CallTimeoutError` raised.
        ``soft_timeout``: seconds after which :class:`SoftTimeoutError` is raised *inside*
        the running call (local workers), so it can clean up; it must be below
        ``timeout``. ``deadline``: seconds the call may wait in the queue; one that has
        not started by then fails with :class:`CallTimeoutError` and never runs.
        ``priority``: 0-10, higher runs first (FIFO within a priority; waiting calls
        age upwards so none starves). ``project``: counts against that project's
        limit (:meth:`set_project_limit`). ``resources``: what the call needs of a
        worker (``{"cpu": 1, "memory": 2e9, "gpu": 1}``); a request no worker could
        ever satisfy raises :class:`UnsatisfiableError` at once. ``block``: when ``maxQueue`` calls already
        wait, False raises :class:`QueueFullError` at once; True (the default) holds the
        call until there is room. For flat memory, ``await em.room()`` before submitting.
        """
        label = _label(fn)
        pool = self._pool
        spec = self._spec(label, priority, project, resources, timeout, deadline, retries, retry_on, soft_timeout,
                          pool=pool)
        if pool.admission.most is not None and pool.admission.full:
            self._no_room(label, block)
        payload = dumps_call(label, (fn, args, kwargs), args, kwargs, fn=fn)
        return pool.submit(CallFuture(pool, spec, p.CALL_FN, payload, args, retry_on=tuple(retry_on),
                                      soft_timeout=soft_timeout or 0.0))

    def _no_room(self, label: str, block: bool) -> None:
        """``maxQueue`` calls wait: say so, and refuse the call unless it may ``block``."""
        pool = self._pool
        self.events.emit("queue-full", queued=pool.queued, held=len(pool.admission.held), call=label)
        if not block:
            raise QueueFullError(
                f"{label} refused: {pool.queued} calls already wait (maxQueue "
                f"{pool.settings.max_queue}); await em.room() or submit with block=True"
            )

    def _spec(
        self, label: str, priority: int, project: str | None, resources: Mapping[str, float] | None,
        timeout: float | None, deadline: float | None, retries: int, retry_on: Iterable[Any],
        soft_timeout: float | None, *, in_process: bool = True, pool: WorkerPool | None = None,
    ) -> CallSpec:
        """A call's validated spec (a ValueError or TypeError names the option at fault;
        :class:`.scheduling.stimuli.CallSpec` checks its own fields)."""
        if soft_timeout is not None and (not isinstance(soft_timeout, int | float) or soft_timeout <= 0):
            raise ValueError(f"{label}: soft_timeout must be a number of seconds above 0, not {soft_timeout!r}")
        if soft_timeout is not None and timeout is not None and soft_timeout >= timeout:
            raise ValueError(f"{label}: soft_timeout ({soft_timeout:g} s) must be below timeout ({timeout:g} s)")
        for kind in retry_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(f"{label}: retry_on must name exception types, not {kind!r}")
        if project is not None and not isinstance(project, str):
            raise ValueError(f"{label}: project must be a name (str), not {project!r}")
        pool = pool or self._pool
        if resources:
            resources = _checked_resources(resources)
            pool.check_resources(resources, label)
        return CallSpec(pool.next_id(), priority, project, resources or None, timeout, deadline, retries,
                        label, in_process=in_process)

    async def room(self) -> None:
        """Wait until the queue has room (``maxQueue``): a producer's back-pressure point."""
        await self._pool.admission.room()

    def set_project_limit(self, project: str, limit: int | None) -> None:
        """At most ``limit`` calls of ``project`` run at once (None: no limit). Calls
        over the limit wait; other projects' calls go past them."""
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"the limit for project {project!r} must be an int >= 1 or None, not {limit!r}")
        self._pool.set_project_limit(project, limit)

    def map(self, fn: Callable[[Any], Any], iterable: Iterable[Any], *,
            chunksize: int | None = None) -> AsyncIterator[Any]:
        """``fn`` over ``iterable`` on the pool, results in input order (async iterator).

        Small items are sent in chunks (``chunksize``; by default about four chunks per
        worker, so every worker stays busy without a round trip per item).
        """
        return self._map(fn, list(iterable), chunksize)

    async def _map(self, fn: Callable[[Any], Any], items: list[Any], chunksize: int | None) -> AsyncIterator[Any]:
        pool = self._pool
        size = chunksize or chunk_size(len(items), max(pool.settings.max_workers, pool.worker_count))
        label = f"map({_label(fn)})"
        futures: list[CallFuture] = []
        try:
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                payload = dumps_call(label, (run_chunk, (fn, chunk), {}), tuple(chunk), {}, fn=fn)
                what = (f"{len(chunk)} items from #{start}",)
                spec = CallSpec(pool.next_id(), label=label)
                futures.append(pool.submit(CallFuture(pool, spec, p.CALL_FN, payload, what)))
            for fut in futures:
                for result in await fut:
                    yield result
        finally:
            for fut in futures:
                fut.cancel()

    def call_method(
        self, instance: Any, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> CallFuture:
        """Run a ``@distributed`` method (the decorator calls this). Sent at once, so
        calls on one pinned instance run in the order they were made.

        Unpinned calls take their delivery options from the manifest's ``priority``,
        ``@method_options`` and ``with call_options(...)``. A pinned instance's calls run
        in order on its worker: priorities, deadlines and timeouts do not apply to them.
        """
        assert self._pins is not None
        pool = self._pool
        label = f"{type(instance).__qualname__}.{method}"
        pin = self._pins.get(instance)
        if pin is not None:
            return self._pins.call(pin, method, args, dict(kwargs))
        manifest = instance.__dict__.get("manifest")
        base = {"priority": manifest.priority} if manifest is not None and manifest.priority is not None else None
        opts = options_for(type(instance), method, base)
        soft = opts.get("soft_timeout")
        spec = self._spec(label, opts.get("priority", DEFAULT_PRIORITY), opts.get("project"), opts.get("resources"),
                          opts.get("timeout"), opts.get("deadline"), opts.get("retries", 0), (), soft,
                          in_process=manifest is not None and manifest.in_process)
        payload = dumps_call(label, (instance, method, args, kwargs), args, kwargs, instance=instance)
        return pool.submit(CallFuture(pool, spec, p.CALL_METHOD, payload, args, soft_timeout=soft or 0.0))

    # -- instances --------------------------------------------------------------------

    async def assign_optimal_worker(self, instance: Any) -> str:
        """Pin a ``@distributed`` instance, with its state, to the best worker now.

        Its method calls then run on that worker's copy, in call order, until
        :meth:`release_worker`. Returns the worker's id.
        """
        assert self._pins is not None
        return await self._pins.assign(instance, self)

    def release_worker(self, instance: Any) -> asyncio.Future[None]:
        """Unpin ``instance`` and bring its state back. Works without await (calls
        made meanwhile wait for the state); ``await`` it to know the state is back."""
        assert self._pins is not None
        return self._pins.release(instance)

    def worker_of(self, instance: Any) -> str | None:
        """The worker an instance is pinned to, or None."""
        return self._pins.worker_of(instance) if self._pins else None

    # -- workers by id ------------------------------------------------------------------

    async def workers(self) -> list[WorkerStats]:
        """Every worker of the pool now (as in ``get_stats().worker_details``)."""
        return (await self.get_stats()).worker_details

    async def worker(self, worker_id: str) -> WorkerStats:
        """One worker now: state, pid, node, what it runs and how far, calls done and
        failed, CPU and RSS, restarts.

        :raises LookupError: no such worker (the message lists the workers).
        """
        workers = await self.workers()
        for w in workers:
            if w.id == worker_id:
                return w
        raise LookupError(f"no worker {worker_id!r} (workers: {', '.join(sorted(w.id for w in workers)) or 'none'})")

    async def drain_worker(self, worker_id: str) -> None:
        """Give the worker no new call, move its pinned instances elsewhere, let what it
        runs finish, then stop it.

        :raises LookupError: no such worker.
        """
        await self._pool.operations.retire(worker_id, "drained on request")

    async def stop_worker(self, worker_id: str) -> None:
        """Stop the worker now: what it runs fails with ``WorkerCrashedError`` naming the
        stop, or is retried under its policy.

        :raises LookupError: no such worker.
        """
        await self._pool.operations.retire(worker_id, "stopped on request", drain=False)

    ALL = ALL  # every worker, for send()

    async def send(self, worker_id: str, message: Any, *, timeout: float = 5.0) -> dict[str, Any]:
        """Send ``message`` (JSON) to the ``on_message(self, msg)`` of each instance
        pinned on ``worker_id`` (or on every worker: ``em.ALL``), between its calls and
        ahead of its queued ones: ``{worker_id: [replies, in pin order]}``, where an
        instance that could not answer gives a :class:`MessageError` naming its class,
        and a worker that could not, its error (``TimeoutError`` past ``timeout``,
        ``WorkerConflictError`` for a kind that takes no messages).

        :raises LookupError: no such worker. :raises ValueError: not JSON, or over 64 KiB.
        """
        return await self._pool.operations.send(worker_id, message, timeout)

    def revoke(self, task_id: int, reason: str = "revoked on request") -> str:
        """Revoke a call by its task id (as shown in errors, logs, events and the
        dashboard): a waiting one never runs, a running one is stopped (its worker is
        replaced); it is never retried, its caller gets :class:`CallRevokedError`, and a
        job whose call it is ends cancelled. Returns where it was: "held", "queued" or
        "running".

        :raises LookupError: no call of that task id is waiting or running.
        :raises WorkerConflictError: a pinned instance's call (release the instance).
        """
        return self._pool.operations.revoke(task_id, reason)

    async def restart_worker(self, worker_id: str) -> None:
        """Drain the worker, then start a new process under its id (a node's slot: its
        node starts another in its place).

        :raises LookupError: no such worker.
        :raises WorkerConflictError: it is leaving already, or its kind cannot restart
            (a Dask worker).
        """
        await self._pool.operations.restart(worker_id)

    def add_route(self, name: str, handler: Route) -> None:
        """Let running calls ask ``task.request(name, *args, **kwargs)``: the kernel runs
        ``handler(call, *args, **kwargs)`` (sync or async) and sends back its answer, or
        raises its exception inside the call."""
        if self.traffic is None:
            raise ExecutionError("the execution manager is not started")
        if name in self.traffic.routes:
            raise ValueError(f"route {name!r} is already served")
        self.traffic.routes[name] = handler

    def add_metrics(self, collector: Any) -> Callable[[], None]:
        """Show a prometheus_client ``Collector``'s figures on ``/metrics`` too (with
        ``custom.http``; else nothing is served). Returns a function that takes it off."""
        web = self.web
        if web is None:
            return lambda: None
        web.registry.register(collector)
        return lambda: web.registry.unregister(collector)

    def subscribe(self, event: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(event, payload)`` on each ``event`` (``"*"``: all)."""
        return self.events.subscribe(event, callback)

    # -- monitoring -------------------------------------------------------------------

    async def get_stats(self) -> Stats:
        """The pool now: workers and nodes, load, queue, projects, counters."""
        if self.monitor is None:
            raise ExecutionError("the execution manager is not started")
        return self.monitor.stats(self.listener, self.nodes_address, len(self._pins or ()))


def _checked_resources(resources: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, amount in dict(resources).items():
        if not isinstance(name, str) or not isinstance(amount, int | float) or amount < 0:
            raise ValueError(f"resources maps names to amounts >= 0; got {name!r}: {amount!r}")
        out[name] = float(amount)
    return out
