"""The kernel's end of a Dask cluster: a :class:`~microkernel.services.execution_manager.executors.NodeListener` that
connects to the scheduler (or starts a ``LocalCluster``), adopts one
:class:`.worker.DaskWorker` per Dask worker into the pool, and follows the cluster:
workers that join are adopted, workers that leave fail (or retry) what they held, and
a scheduler that goes away fails every worker until it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping
from typing import Any

import structlog

from kernel.errors import PluginError
from kernel.packages import service_packages
from microkernel.services.execution_manager.executors import NodeHost, NodeInfo, NodeListener

from . import remote
from .collect import Results
from .scaling import WorkerView, plan
from .settings import DaskSettings
from .versions import check_version
from .worker import DaskWorker

log = structlog.get_logger("dask")


class DaskCluster(NodeListener):
    """See the module docstring."""

    def __init__(self, settings: DaskSettings) -> None:
        self.settings = settings
        self.client: Any = None
        self._results: Results | None = None  # the client's, shared by its workers: see Results
        self.cluster: Any = None  # the LocalCluster we started, if any
        self.address = settings.scheduler or ""
        self.workers: dict[str, DaskWorker] = {}  # Dask address -> its executor
        self._by_id: dict[str, DaskWorker] = {}  # every executor whose calls' traffic arrives here
        self._info: dict[str, Mapping[str, Any]] = {}
        self._host: NodeHost | None = None
        self._watch: asyncio.Task[None] | None = None
        self._accepting = True
        self._seq = 0
        self._scheduler_lost = False
        self._idle: dict[str, float | None] = {}  # Dask address -> when it became idle
        self.last_decision = ""
        self.last_error: str | None = None  # why the scheduler cannot be reached, while it cannot
        self._next_try = 0.0

    async def start(self, host: NodeHost) -> str:
        """Attach to the cluster. A scheduler that cannot be reached within
        ``connectTimeout`` is logged as an error naming it, and the kernel goes on with
        its other workers while this keeps trying; a LocalCluster that cannot start
        raises :class:`PluginError`."""
        check_version()
        s = self.settings
        self._host = host
        if s.local is not None:
            try:
                async with asyncio.timeout(s.connect_timeout):
                    await self._start_local()
            except (TimeoutError, OSError) as exc:
                await self._close()
                raise PluginError(f"the Dask LocalCluster did not start within {s.connect_timeout:g} s "
                                  f"({type(exc).__name__}: {exc})") from None
        elif not await self._reconnect():
            self._scheduler_lost = True
            log.error("cannot reach the Dask scheduler; going on without its workers and trying again",
                      scheduler=self.address, setting="custom.nodes.scheduler", error=self.last_error)
        try:
            if self.client is not None:
                await self._look()
        except BaseException:
            await self._close()
            raise
        self._watch = asyncio.get_running_loop().create_task(self._follow())
        log.info("dask cluster attached", scheduler=self.address, workers=len(self.workers))
        return self.address

    async def _reconnect(self) -> bool:
        """One attempt to connect to ``scheduler`` (spaced out by ``connectTimeout``)."""
        now = time.monotonic()
        if now < self._next_try:
            return False
        s = self.settings
        self._next_try = now + min(30.0, max(1.0, s.connect_timeout))
        await self._drop_client()
        try:
            async with asyncio.timeout(s.connect_timeout):
                await self._connect()
        except (TimeoutError, OSError) as exc:
            await self._drop_client()
            self.last_error = (f"cannot reach the Dask scheduler at {self.address} within {s.connect_timeout:g} s "
                               f"({type(exc).__name__}: {exc or 'timed out'}); check custom.nodes.scheduler")
            return False
        if self.last_error is not None:
            log.info("connected to the Dask scheduler", scheduler=self.address)
        self.last_error = None
        return True

    async def _drop_client(self) -> None:
        client, self.client = self.client, None
        results, self._results = self._results, None
        if results is not None:
            await results.close()
        if client is not None:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(remote.TOPIC)
            with contextlib.suppress(Exception):
                await client.close()

    async def _start_local(self) -> None:
        from distributed import Client, LocalCluster

        local = self.settings.local
        assert local is not None
        self.cluster = await LocalCluster(
            n_workers=local.workers, threads_per_worker=local.threads_per_worker, processes=local.processes,
            memory_limit=local.memory_limit, asynchronous=True,
            dashboard_address="127.0.0.1:0",  # its scheduler serves HTTP even without bokeh: any free local port
        )
        self.address = self.cluster.scheduler_address
        self.client = await Client(self.cluster, asynchronous=True)
        await self._prepare()

    async def _connect(self) -> None:
        """Connect a client to ``scheduler`` (also after Dask's own client gave up)."""
        from distributed import Client, Security

        s = self.settings
        security = None
        if s.security is not None:
            sec = s.security
            security = Security(tls_ca_file=sec.tls_ca_file, tls_client_cert=sec.tls_client_cert,
                                tls_client_key=sec.tls_client_key, require_encryption=sec.require_encryption)
        # Kept before it connects, so a failed attempt is closed, not left to __del__.
        self.client = Client(self.address, asynchronous=True, security=security, timeout=s.connect_timeout)
        await self.client
        await self._prepare()

    def _live_results(self) -> Results:
        """The connected client's :class:`Results` (executors are made only while connected)."""
        assert self._results is not None, "no Dask client"
        return self._results

    async def _prepare(self) -> None:
        self._results = Results(self.client)
        self.client.subscribe_topic(remote.TOPIC, self._on_event)
        await self.client.register_plugin(remote.ServicePackages(service_packages()))

    # -- following the cluster ----------------------------------------------------------

    async def _follow(self) -> None:
        local = self.settings.local
        scales = local is not None and local.bounds[0] != local.bounds[1]
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                await self._look()
                if scales:
                    await self._autoscale()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("looking at the Dask cluster failed", scheduler=self.address, error=str(exc))

    async def _look(self) -> None:
        try:
            gone = self.client is None or self.client.status in ("closing", "closed")
            if self.cluster is None and gone and not await self._reconnect():
                # never connected, or Dask's own client gave up reconnecting; tried again above
                raise OSError(self.last_error)
            async with asyncio.timeout(max(2.0, self.settings.poll_interval * 4)):
                identity = await self.client.scheduler.identity()
        except (TimeoutError, OSError) as exc:
            if not self._scheduler_lost:
                self._scheduler_lost = True
                log.warning("the Dask scheduler is unreachable", scheduler=self.address, error=str(exc))
            for address in list(self.workers):
                self._remove(address, f"the scheduler at {self.address} is unreachable")
            return
        if self._scheduler_lost:
            self._scheduler_lost = False
            log.info("the Dask scheduler is back", scheduler=self.address)
        seen: Mapping[str, Mapping[str, Any]] = identity.get("workers", {})
        for address in [a for a in self.workers if a not in seen]:
            self._remove(address, "it left the Dask cluster")
        for address, info in seen.items():
            self._info[address] = info
            ex = self.workers.get(address)
            if ex is None and self._accepting:
                await self._adopt(address, info)
            elif ex is not None:
                metrics = info.get("metrics", {})
                ex.rss = int(metrics.get("memory") or 0)
                ex.cpu_percent = float(metrics.get("cpu") or 0.0)

    async def _autoscale(self) -> None:
        """Grow or shrink the LocalCluster we started (``local.minWorkers`` ..
        ``maxWorkers``); an idle worker is drained out of the pool before it is closed."""
        local, cluster, host = self.settings.local, self.cluster, self._host
        if local is None or cluster is None or host is None or not self._accepting:
            return
        now = time.monotonic()
        names = {address: self._info.get(address, {}).get("name", address) for address in self.workers}
        views = []
        for address, ex in self.workers.items():
            if ex.is_closed:  # being scaled down
                continue
            if ex.inflight:
                self._idle[address] = None
            elif self._idle.get(address) is None:
                self._idle[address] = now
            views.append(WorkerView(str(names[address]), len(ex.inflight), ex.slots, self._idle[address]))
        starting = max(0, len(cluster.worker_spec) - len(self.workers))
        low, high = local.bounds
        decision = plan(views, host.waiting, starting, low, high, now, local.idle_timeout)
        if not decision.reason:
            return
        self.last_decision = decision.reason
        log.info("scaling the dask cluster", target=decision.target, retire=list(decision.retire),
                 reason=decision.reason)
        for name in decision.retire:
            address = next(a for a, n in names.items() if str(n) == name)
            self._idle.pop(address, None)
            await host.retire(self.workers[address].id, f"dask cluster scaled down: {decision.reason}")
            await cluster.scale_down([names[address]])
        if decision.target > len(self.workers) + starting:
            cluster.scale(decision.target)

    async def _adopt(self, address: str, info: Mapping[str, Any]) -> None:
        assert self._host is not None
        self._seq += 1
        ex = DaskWorker(f"dask-{_short(info.get('name'), address)}.{self._seq}", self.client, address,
                        slots=int(info.get("nthreads", 1)), results=self._live_results(),
                        memory_limit=int(info.get("memory_limit") or 0) or None)
        await ex.start()
        self.workers[address] = ex
        self._by_id[ex.id] = ex
        self._host.adopt(ex)
        log.info("dask worker adopted", worker_id=ex.id, address=address, threads=ex.slots)

    def _remove(self, address: str, reason: str) -> None:
        ex = self.workers.pop(address, None)
        self._info.pop(address, None)
        if ex is not None:
            self._by_id.pop(ex.id, None)
        if ex is not None and not ex.is_closed:
            log.warning("dask worker lost", worker_id=ex.id, address=address, reason=reason)
            ex.lost(reason)
        for other in [e for e in self._by_id.values() if e.address == address]:  # slot_executor's, on it too
            del self._by_id[other.id]
            other.lost(reason)

    def _on_event(self, event: Any) -> None:
        _, message = event if isinstance(event, tuple) else (None, event)
        if not isinstance(message, Mapping):
            return
        ex = self._by_id.get(str(message.get("executor")))
        if ex is not None:
            ex.traffic(message)

    def slot_executor(self, worker_id: str, address: str | None = None) -> DaskWorker:
        """A worker on one Dask worker (the first, by default) that the pool did not
        adopt: for the conformance suite and for tools."""
        address = address or next(iter(self.workers))
        known = self.workers[address]
        ex = DaskWorker(worker_id, self.client, address, slots=known.slots, results=self._live_results(),
                        memory_limit=known.memory_limit)
        self._by_id[worker_id] = ex
        return ex

    # -- NodeListener -------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self._accepting = False

    async def stop(self) -> None:
        self._accepting = False
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await self._close()

    async def _close(self) -> None:
        await self._drop_client()
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                await cluster.close()

    def nodes(self) -> list[NodeInfo]:
        now = time.time()
        out = []
        for address, ex in self.workers.items():
            info = self._info.get(address, {})
            limit = ex.memory_limit or 0
            out.append(NodeInfo(
                id=ex.id, address=address,
                state="unhealthy" if self._scheduler_lost else "out of the pool" if ex.is_closed else "available",
                slots=ex.slots, running=len(ex.inflight), cpu_percent=ex.cpu_percent,
                memory_percent=100.0 * ex.rss / limit if limit else 0.0,
                heartbeat_age=max(0.0, now - float(info.get("last_seen", now))),
                labels={}, python="", version="dask",
            ))
        return out

    def refusals(self) -> Mapping[str, int]:
        return {}

    def problem(self) -> str | None:
        return self.last_error


def _short(name: Any, address: str) -> str:
    """A worker's name fit for ids and URLs: its Dask name when that is plain (``0``,
    ``gpu-a``), else its host and port (``10.0.0.5-40123``)."""
    text = str(name) if name is not None else ""
    if not text or not re.fullmatch(r"[\w.-]+", text):
        text = re.sub(r"[^\w.]+", "-", address.partition("://")[2] or address).strip("-")
    return text
