"""The kernel: discovers, validates, orders, starts, stops and hands out services."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import pluggy
import structlog

from . import logs
from .blame import describe
from .errors import (
    KernelError,
    ServiceAccessError,
    ServiceNotFoundError,
    ServiceStartError,
    SettingsError,
)
from .interfaces import ServiceState
from .loader import add_package_root, discover, load_entry, order, plan_packages
from .manifest import ServiceSpec
from .overrides import blame_caller, settings_for
from .plugins import make_plugin_manager
from .process import freeze_heap, raise_open_files
from .service import BaseService

log = structlog.get_logger("kernel")
STOP_GRACE = 5.0  # seconds a hurried service gets to stop at once once the deadline has passed
T = TypeVar("T")
SERVICE_GROUP = "microkernel.services"


@dataclass
class ServiceRecord:
    spec: ServiceSpec
    state: ServiceState = ServiceState.PENDING
    instance: BaseService | None = None
    error: BaseException | None = None


def builtin_service_folders() -> list[Path]:
    """Folders of the services that ship with the kernel (entry-point group); each is
    imported under its entry point's name."""
    folders = []
    for ep in importlib.metadata.entry_points(group=SERVICE_GROUP):
        module = ep.load()
        add_package_root(module.__name__)
        folders.append(Path(module.__file__).parent)
    return folders


class Kernel:
    """The microkernel. Use as ``async with Kernel(["services"]) as kernel: ...``.

    :param paths: folders to search for services (each a service folder or a folder of
        them, searched recursively).
    :param plugins: plugin objects or modules to register besides the installed ones.
    :param settings: per-service overrides of the manifests' ``custom`` objects, as
        ``{"execution-manager": {"maxWorkers": 2}}``.
    :param defaults: per-service values used where a manifest's ``custom`` says nothing
        (``kernel run`` turns the dashboard on this way; a manifest can still say
        ``"http": null``).
    :param builtins: load the services that ship with the kernel (the execution manager).
    :param stop_timeout: seconds all services together get to stop (running work to
        finish); then they are hurried (``hurry``), and one that does not stop within a
        few seconds more is abandoned.
    :param log_level: ``debug`` ... ``critical`` for the process's structlog set-up (else
        ``$KERNEL_LOG_LEVEL``, else ``info``; an application that configured structlog
        itself keeps its set-up unless this is given).
    """

    def __init__(
        self,
        paths: Iterable[str | Path] = (),
        *,
        plugins: Iterable[Any] = (),
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        defaults: Mapping[str, Mapping[str, Any]] | None = None,
        builtins: bool = True,
        stop_timeout: float = 30.0,
        log_level: str | None = None,
    ) -> None:
        if log_level is not None:
            logs.configure(log_level)
        elif not structlog.is_configured():
            logs.configure()  # the application has not: $KERNEL_LOG_LEVEL or info, on stderr
        self.paths = [Path(p) for p in paths]
        self.pm: pluggy.PluginManager = make_plugin_manager(plugins)
        self.hook = self.pm.hook
        self.id = f"{socket.gethostname()}-{os.getpid()}"  # in every log line its services write
        self._overrides = {k: dict(v) for k, v in (settings or {}).items()}
        self._defaults = {k: dict(v) for k, v in (defaults or {}).items()}
        self._builtins = builtins
        self._stop_timeout = stop_timeout
        self._records: dict[str, ServiceRecord] = {}
        self._started: list[str] = []
        self._packages: dict[str, str] = {}
        self.running = False
        # Set on a second SIGINT/SIGTERM while stopping: services stop at once.
        self.hurry = asyncio.Event()

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path], **options: Any) -> Kernel:
        """The kernel for the services found under ``paths`` (see the constructor)."""
        return cls(paths, **options)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for rec in self._records.values():
            counts[rec.state] = counts.get(rec.state, 0) + 1
        states = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        return f"<Kernel services={len(self._records)} {states}>".replace(" >", ">")

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Kernel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Discover, validate and order every service, then start them in order.

        Raises :class:`ManifestError` or :class:`DependencyError` before anything
        starts, and :class:`ServiceStartError` when a ``failOnError`` service fails
        (after stopping, in reverse order, what had started).
        """
        if self.running or self._records:
            raise KernelError("this kernel has already been started")
        raise_open_files()
        builtin = builtin_service_folders() if self._builtins else []
        specs = order(discover(self.paths, builtin))
        self._packages = plan_packages(specs)
        unknown = sorted(set(self._overrides) - {s.name for s in specs})
        if unknown:
            known = ", ".join(sorted(s.name for s in specs))
            raise SettingsError(unknown[0], [("", f"no service of that name is loaded (known services: {known})")],
                                unknown=True)
        self._records = {s.name: ServiceRecord(s) for s in specs}
        try:
            for spec in specs:
                await self._start_one(self._records[spec.name])
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop_started()
            raise
        self.running = True
        freeze_heap(+1)
        self.hook.kernel_started(kernel=self)
        log.info("kernel started", services=self._started)

    async def _start_one(self, rec: ServiceRecord) -> None:
        spec = rec.spec
        blocked = [
            d for d in spec.manifest.dependencies if self._records[d].state != ServiceState.RUNNING
        ]
        try:
            if blocked:
                rec.state = ServiceState.SKIPPED
                raise KernelError(f"not started: its dependencies failed ({', '.join(blocked)})")
            cls = load_entry(spec, self._packages.get(spec.name))
            if cls.name and cls.name != spec.name:
                raise KernelError(
                    f"class {cls.__name__} declares name {cls.name!r} but its manifest "
                    f"({spec.path}) names it {spec.name!r}"
                )
            instance = cls()
            instance._kernel = self
            instance.manifest = spec.manifest
            instance.name = spec.name
            instance.settings = self._settings_for(spec, cls)
            rec.instance = instance
            self.hook.kernel_service_loaded(kernel=self, name=spec.name, service=instance)
            rec.state = ServiceState.STARTING
            try:
                with structlog.contextvars.bound_contextvars(kernel_id=self.id, service=spec.name):
                    await instance.start()  # tasks it starts log with both ids
            except anyio.get_cancelled_exc_class():
                self._started.append(spec.name)  # cancelled half-way: its stop() undoes what it began
                raise
        except Exception as raised:
            exc = blame_caller(spec.name, self._overrides.get(spec.name), raised)
            rec.error = exc
            if blocked:
                # Not its own failure: a dependency that was allowed to fail did (one that
                # was not has stopped start-up already). So it is skipped, whatever its own
                # failOnError says, and start-up goes on.
                self.hook.kernel_service_failed(kernel=self, name=spec.name, error=exc)
                log.error("service skipped: its dependencies failed", service=spec.name,
                          failed_dependencies=blocked)
                return
            rec.state = ServiceState.FAILED
            self.hook.kernel_service_failed(kernel=self, name=spec.name, error=exc)
            if isinstance(exc, SettingsError):
                raise exc from exc.__cause__  # the caller's settings are wrong, whatever failOnError says
            if spec.manifest.fail_on_error:
                raise ServiceStartError(spec.name, exc) from exc
            log.error("service failed", service=spec.name, state=rec.state.value, error=describe(exc))
            return
        rec.state = ServiceState.RUNNING
        self._started.append(spec.name)
        self.hook.kernel_service_started(kernel=self, name=spec.name, service=instance)
        log.debug("service started", service=spec.name)

    def manifest_path(self, name: str) -> Path:
        """The config.json a loaded service came from."""
        rec = self._records.get(name)
        if rec is None:
            raise ServiceNotFoundError(name, self._records)
        return rec.spec.path

    def _settings_for(self, spec: ServiceSpec, cls: type[BaseService]) -> Any:
        return settings_for(spec, cls.settings_model, self._defaults.get(spec.name, {}),
                            self._overrides.get(spec.name, {}))

    async def stop(self) -> None:
        """Stop every started service in reverse start order. Idempotent."""
        if self._started:
            self.hook.kernel_stopping(kernel=self)
        with anyio.CancelScope(shield=True):
            await self._stop_started()
        if self.running:
            freeze_heap(-1)
        self.running = False

    async def _stop_started(self) -> None:
        if not self._started:
            return
        budget = self._stop_timeout
        log.info(f"stopping {len(self._started)} services: running work gets up to {budget:g} s in all; "
                 "a second Ctrl-C or SIGTERM stops at once", services=self._started[::-1])
        deadline = anyio.current_time() + budget
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._hurry_at, deadline)
            while self._started:
                name = self._started.pop()
                rec = self._records[name]
                assert rec.instance is not None
                # Past the deadline services are hurried; each still gets a short grace to
                # stop at once (kill its workers) before it is abandoned.
                with anyio.move_on_after(max(deadline - anyio.current_time(), 0) + STOP_GRACE) as scope, \
                        structlog.contextvars.bound_contextvars(kernel_id=self.id, service=name):
                    try:
                        await rec.instance.stop()
                    except Exception as exc:
                        log.error("service failed to stop", service=name, error=describe(exc))
                if scope.cancelled_caught:
                    log.error("service abandoned: it did not stop in time", service=name,
                              waited=round(budget + STOP_GRACE, 1))
                rec.state = ServiceState.STOPPED
                self.hook.kernel_service_stopped(kernel=self, name=name)
            tg.cancel_scope.cancel()

    async def _hurry_at(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)
        if not self.hurry.is_set():
            log.warning("stop deadline passed: stopping at once", after=f"{self._stop_timeout:g} s")
            self.hurry.set()

    # -- lookup -------------------------------------------------------------------

    def get_service(self, name: str, *, requester: str | None = None) -> Any:
        """The running service ``name``.

        Application code (``requester=None``) gets global services only; a service
        gets global ones and those it lists in ``dependencies``. Raises
        :class:`ServiceNotFoundError` (listing the known names) or
        :class:`ServiceAccessError`.
        """
        rec = self._records.get(name)
        if rec is None:
            raise ServiceNotFoundError(name, self._records)
        manifest = rec.spec.manifest
        if not manifest.global_ and name != requester:
            allowed = requester is not None and name in self._records[requester].spec.manifest.dependencies
            if not allowed:
                users = [r.spec.name for r in self._records.values() if name in r.spec.manifest.dependencies]
                who = "application code" if requester is None else f"service {requester!r}"
                raise ServiceAccessError(
                    name,
                    self._records,
                    detail=f"service {name!r} is not global and {who} does not list it in "
                    f"'dependencies' (it is handed to: {', '.join(users) or 'no service'})",
                )
        if rec.state != ServiceState.RUNNING or rec.instance is None:
            reason = f": {rec.error}" if rec.error else ""
            raise ServiceNotFoundError(
                name, self._records, detail=f"service {name!r} is {rec.state.value}{reason}"
            )
        return rec.instance

    def find_service(self, name: str) -> Any | None:
        """The running service ``name`` or None, without visibility rules (kernel use)."""
        rec = self._records.get(name)
        if rec is None or rec.state != ServiceState.RUNNING:
            return None
        return rec.instance

    def service_states(self) -> dict[str, ServiceState]:
        """Every known service and its state, in start order."""
        return {name: rec.state for name, rec in self._records.items()}

    def service_error(self, name: str) -> BaseException | None:
        """Why a service failed or was skipped, if it did."""
        rec = self._records.get(name)
        return rec.error if rec else None

    # -- running from sync code ---------------------------------------------------

    async def serve(self, ready: Callable[[Kernel], Awaitable[None]] | None = None) -> None:
        """Start, run until SIGINT or SIGTERM, then stop cleanly.

        A signal during start-up stops what has started (and the service starting). The
        stop has one deadline for all services (``stop_timeout``); at the deadline, or on
        a second signal, services stop at once (``hurry``).
        """
        failure: BaseException | None = None
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as watcher:
                running = anyio.CancelScope()
                watcher.start_soon(self._on_signals, signals, running)
                try:
                    with running:
                        await self.start()
                        if ready is not None:
                            await ready(self)
                        await anyio.sleep_forever()
                except Exception as exc:  # raised below, as itself rather than in a group
                    failure = exc
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.stop()
                    watcher.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _on_signals(self, signals: AsyncIterator[int], running: anyio.CancelScope) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not running.cancel_called:
                log.info("stopping on signal", signal=name, starting=not self.running)
                running.cancel()
            else:
                log.warning("second signal: stopping at once", signal=name)
                self.hurry.set()
                return

    def run(self, main: Callable[[Kernel], Awaitable[T]]) -> T:
        """From sync code: start the kernel, ``await main(kernel)``, stop, return its value."""

        async def runner() -> T:
            async with self:
                return await main(self)

        return anyio.run(runner)
