"""Instances pinned to a worker: they live there, state and all, until released.

Calls on a pinned instance go straight to its worker in call order. While it moves
(its worker retires) or comes back (release), new calls wait for it, in order,
and go wherever the instance ends up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from ..errors import InstanceLostError, WorkerStartError
from ..events import EventBus
from ..scheduling import CallSpec
from ..wire import protocol as p
from ..wire.serialization import dumps, dumps_call
from .fleet import PoolWorker
from .handles import CallFuture
from .pool import WorkerPool

log = structlog.get_logger("execution-manager")

PlaceUnpinned = Callable[[Any, str, tuple[Any, ...], dict[str, Any]], CallFuture]


class Pin:
    __slots__ = ("assigned", "instance", "key", "ready", "releasing", "waiting", "worker_id")

    def __init__(self, key: str, instance: Any, worker_id: str) -> None:
        self.key = key
        self.instance = instance
        self.worker_id = worker_id
        self.ready = False
        self.assigned = asyncio.Event()
        self.waiting: deque[tuple[str, tuple[Any, ...], dict[str, Any], CallFuture]] = deque()
        self.releasing: asyncio.Future[None] | None = None


def _chain(outer: CallFuture, inner: CallFuture) -> None:
    """``outer`` settles as ``inner`` does; cancelling ``outer`` cancels ``inner``."""

    def copy(done: asyncio.Future[Any]) -> None:
        if outer.done():
            return
        if done.cancelled():
            outer.cancel()
        elif done.exception() is not None:
            outer.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            outer.set_result(done.result())

    inner.add_done_callback(copy)
    inner.on_progress(lambda update: outer.report_progress(*update))
    outer.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)


def _log_failure(fut: asyncio.Future[None]) -> None:
    """A release nobody awaited still reports its failure (and the future is retrieved)."""
    if not fut.cancelled() and fut.exception() is not None:
        log.error("release_worker failed", error=str(fut.exception()))


def _state_of(obj: Any) -> dict[str, Any]:
    state = obj.__getstate__() if hasattr(obj, "__getstate__") else None
    return dict(state) if isinstance(state, dict) else dict(vars(obj))


class PinTable:
    """The pinned instances of one execution manager."""

    def __init__(self, pool: WorkerPool, events: EventBus, place_unpinned: PlaceUnpinned) -> None:
        self.pool = pool
        self.events = events
        self._place_unpinned = place_unpinned  # where a released instance's calls go
        self._by_id: dict[int, Pin] = {}
        self._by_key: dict[str, Pin] = {}
        pool.fleet.keep_pins(self)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, instance: Any) -> Pin | None:
        return self._by_id.get(id(instance))

    def worker_of(self, instance: Any) -> str | None:
        pin = self._by_id.get(id(instance))
        return pin.worker_id if pin else None

    # -- assign -----------------------------------------------------------------------

    async def assign(self, instance: Any, manager: Any) -> str:
        cls = type(instance)
        if not hasattr(cls, "__distributed_methods__"):
            raise TypeError(
                f"{cls.__qualname__} is not @distributed; decorate the class with "
                "kernel.distributed to assign its instances to a worker"
            )
        pin = self._by_id.get(id(instance))
        if pin is not None:
            await pin.assigned.wait()
            return pin.worker_id
        label = f"assign {cls.__qualname__}"
        key = uuid.uuid4().hex
        payload = dumps_call(label, (key, instance), (), {}, instance=instance)
        worker = await self.pool.fleet.wait_for_worker()
        if worker is None:
            raise WorkerStartError(f"no worker is available to assign {cls.__qualname__} to")
        pin = Pin(key, instance, worker.id)
        self._by_id[id(instance)] = self._by_key[key] = pin
        worker.pins.add(key)
        try:
            await self._pin_on(pin, worker, payload)
        except BaseException:
            self._home(pin)
            raise
        instance.__dict__["_em"] = manager
        self.events.emit("instance-assigned", worker_id=worker.id, instance=cls.__qualname__)
        return worker.id

    def _submit(self, worker_id: str, kind: int, payload: bytes, label: str, args: tuple[Any, ...] = ()) -> CallFuture:
        """Send a call to one worker, in order behind what it was sent before."""
        pool = self.pool
        spec = CallSpec(pool.next_id(), label=label, pinned_to=worker_id)
        return pool.submit(CallFuture(pool, spec, kind, payload, args))

    async def _run(self, worker_id: str, kind: int, payload: bytes, label: str) -> Any:
        """Run an internal call (pin, release) on one worker and return its result."""
        return await self._submit(worker_id, kind, payload, label)

    async def _pin_on(self, pin: Pin, worker: PoolWorker, payload: bytes) -> None:
        await self._run(worker.id, p.PIN, payload, f"pin {type(pin.instance).__qualname__}")
        pin.worker_id = worker.id
        pin.ready = True
        pin.assigned.set()
        self._flush(pin)

    # -- calls ------------------------------------------------------------------------

    def call(self, pin: Pin, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallFuture:
        """Send a call to the pinned copy now (or queue it, in order, while it moves).

        The future follows the reply alone: cancelling it must not stop the worker
        that holds the instance's state."""
        if pin.ready and not pin.waiting:
            return self._send(pin, method, args, kwargs)
        label = f"{type(pin.instance).__qualname__}.{method}"
        out = CallFuture(self.pool, CallSpec(self.pool.next_id(), label=label), p.CALL_PINNED, b"", args)
        pin.waiting.append((method, args, kwargs, out))
        return out

    def _send(self, pin: Pin, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallFuture:
        label = f"{type(pin.instance).__qualname__}.{method}"
        payload = dumps_call(label, (pin.key, method, args, kwargs), args, kwargs)
        return self._submit(pin.worker_id, p.CALL_PINNED, payload, label, args)

    def _flush(self, pin: Pin) -> None:
        """Send the calls that waited where the instance now lives (its worker, or unpinned)."""
        pinned = pin.ready and self._by_id.get(id(pin.instance)) is pin
        while pin.waiting:
            method, args, kwargs, out = pin.waiting.popleft()
            if out.done():
                continue
            try:
                if pinned:
                    _chain(out, self._send(pin, method, args, kwargs))
                else:
                    _chain(out, self._place_unpinned(pin.instance, method, args, kwargs))
            except Exception as exc:
                out.set_exception(exc)

    # -- release, move, loss ----------------------------------------------------------

    def release(self, instance: Any) -> asyncio.Future[None]:
        pin = self._by_id.get(id(instance))
        if pin is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if pin.releasing is None:
            pin.ready = False  # calls made from now on wait for the state to come back
            pin.releasing = asyncio.ensure_future(self._release(pin))
            pin.releasing.add_done_callback(_log_failure)
        return pin.releasing

    async def _release(self, pin: Pin) -> None:
        await pin.assigned.wait()
        worker_id = pin.worker_id
        copy = None
        try:
            copy = await self._unpin(pin)
        finally:
            self._home(pin, copy)
        self.events.emit("instance-released", worker_id=worker_id, instance=type(pin.instance).__qualname__)

    async def _unpin(self, pin: Pin) -> Any:
        label = f"release {type(pin.instance).__qualname__}"
        copy = await self._run(pin.worker_id, p.UNPIN, dumps(pin.key), label)
        if copy is None:
            raise InstanceLostError(f"worker {pin.worker_id} no longer holds the instance")
        return copy

    async def move_off(self, worker: PoolWorker) -> None:
        """The worker retires: move each instance it holds to another worker (or home)."""
        for key in list(worker.pins):
            pin = self._by_key.get(key)
            if pin is None:
                continue
            pin.ready = False
            await pin.assigned.wait()
            try:
                copy = await self._unpin(pin)
            except Exception as exc:
                log.error("instance lost while moving", worker_id=worker.id, error=str(exc))
                self._home(pin)
                continue
            worker.pins.discard(key)
            target = await self.pool.fleet.wait_for_worker(exclude=worker.id, start=False)
            name = type(pin.instance).__qualname__
            if target is None:
                self._home(pin, copy)
                self.events.emit("instance-released", worker_id=worker.id, instance=name, reason="worker retired")
                continue
            target.pins.add(key)
            try:
                await self._pin_on(pin, target, dumps((key, copy)))
            except Exception as exc:
                log.error("instance could not move; brought home", worker_id=target.id, error=str(exc))
                self._home(pin, copy)
                continue
            self.events.emit("instance-moved", worker_id=target.id, from_worker=worker.id, instance=name)

    def lost(self, worker: PoolWorker) -> None:
        """The worker died: its instances are unpinned; their state since assignment is gone."""
        for key in list(worker.pins):
            pin = self._by_key.get(key)
            if pin is None:
                continue
            name = type(pin.instance).__qualname__
            log.warning("pinned instance lost with its worker", worker_id=worker.id, instance=name)
            self._drop(pin)
            if pin.releasing is None and pin.assigned.is_set():
                self._flush(pin)
            self.events.emit("instance-lost", worker_id=worker.id, instance=name)

    def _home(self, pin: Pin, copy: Any = None) -> None:
        """Unpin: the state of ``copy`` (the worker's copy), if any, comes back to the
        local instance, and calls that waited go to per-call placement."""
        if copy is not None:
            pin.instance.__dict__.update(_state_of(copy))
        self._drop(pin)
        self._flush(pin)

    def _drop(self, pin: Pin) -> None:
        if self._by_id.get(id(pin.instance)) is pin:
            del self._by_id[id(pin.instance)]
        self._by_key.pop(pin.key, None)
        worker = self.pool.fleet.workers.get(pin.worker_id)
        if worker is not None:
            worker.pins.discard(pin.key)
        pin.ready = False
        pin.assigned.set()
