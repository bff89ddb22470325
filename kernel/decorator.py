"""The ``@distributed`` class decorator.

Every public plain method (sync or async) of a decorated service becomes awaitable
and runs where the execution manager places it:

- an instance pinned with ``em.assign_optimal_worker(instance)`` lives on its worker:
  calls run on that copy, in call order, and ``em.release_worker(instance)`` brings
  its state back;
- any other instance's calls run on a **replica** made for the call (a pickled copy):
  changes the method makes to ``self`` are *not* written back. Keep per-call results in
  return values, or pin the instance when its state must persist across calls.

Inside a running call (on a worker, or in-process), a method called on ``self`` runs
directly and returns its plain value, as in ordinary Python.

Delivery options (``priority``, ``timeout``, ``retries``, ``deadline``, ``project``)
come from, last one winning: the manifest's ``priority``, ``@method_options(...)`` on
the method, and ``with call_options(...):`` around the call.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from .interfaces import EXECUTION_MANAGER, Dispatcher

T = TypeVar("T", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

# True while the runtime executes a call: methods then run inline.
inline: contextvars.ContextVar[bool] = contextvars.ContextVar("kernel_inline", default=False)

_SKIP = frozenset({"start", "stop", "get_service"})
OPTION_NAMES = frozenset({"priority", "timeout", "soft_timeout", "retries", "deadline", "project", "resources"})

# Per-call overrides set by ``with call_options(...)``.
_overrides: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "kernel_call_options", default=MappingProxyType({})
)


def _checked(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown call options {sorted(unknown)}; known: {sorted(OPTION_NAMES)}")
    return dict(options)


def method_options(**options: Any) -> Callable[[F], F]:
    """Default delivery options for one ``@distributed`` method::

        @method_options(priority=8, timeout=30, retries=2)
        def train(self, data): ...
    """
    checked = _checked(options)

    def mark(fn: F) -> F:
        fn.__call_options__ = checked  # type: ignore[attr-defined]
        return fn

    return mark


@contextlib.contextmanager
def call_options(**options: Any) -> Iterator[None]:
    """Override delivery options for the ``@distributed`` calls made inside the block::

        with call_options(priority=9):
            fut = svc.train(data)
    """
    token = _overrides.set({**_overrides.get(), **_checked(options)})
    try:
        yield
    finally:
        _overrides.reset(token)


def options_for(cls: type, method: str, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options a call of ``cls.method`` made here and now runs with."""
    fn = getattr(cls, "__distributed_methods__", {}).get(method)
    defaults = getattr(fn, "__call_options__", None) or {}
    return {**(base or {}), **defaults, **_overrides.get()}


def distributed(cls: T) -> T:
    """Make ``cls``'s public methods run on the execution manager's pool."""
    if not inspect.isclass(cls):
        raise TypeError(f"@distributed decorates a class, not {type(cls).__name__}")
    originals: dict[str, Callable[..., Any]] = dict(getattr(cls, "__distributed_methods__", {}))
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or name in _SKIP or not inspect.isfunction(fn):
            continue
        originals[name] = fn
        setattr(cls, name, _wrap(name, fn))
    cls.__distributed_methods__ = originals  # type: ignore[attr-defined]
    return cls


def original_method(cls: type, name: str) -> Callable[..., Any] | None:
    """The undecorated function behind ``cls.name``, or None if there is none."""
    table: dict[str, Callable[..., Any]] = getattr(cls, "__distributed_methods__", {})
    found = table.get(name)
    if found is None:
        attr = getattr(cls, name, None)
        found = attr if callable(attr) else None
    return found


def _dispatcher_of(instance: Any) -> Dispatcher | None:
    em = instance.__dict__.get("_em")
    if em is not None:
        return em  # type: ignore[no-any-return]
    kernel = instance.__dict__.get("_kernel")
    if kernel is not None:
        found = kernel.find_service(EXECUTION_MANAGER)
        if isinstance(found, Dispatcher):  # a Protocol check is slow: once per instance
            instance.__dict__["_em"] = found
            return found
    return None


def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    is_async = inspect.iscoroutinefunction(fn)

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if inline.get():
            return fn(self, *args, **kwargs)
        dispatcher = _dispatcher_of(self)
        if dispatcher is None:
            return _run_here(fn, is_async, self, args, kwargs)
        return dispatcher.call_method(self, name, args, kwargs)

    wrapper.__distributed__ = True  # type: ignore[attr-defined]
    return wrapper


async def _run_here(
    fn: Callable[..., Any], is_async: bool, instance: Any, args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """No execution manager (an instance made by hand): run in this process."""
    if is_async:
        token = inline.set(True)
        try:
            return await fn(instance, *args, **kwargs)
        finally:
            inline.reset(token)

    def call() -> Any:
        inline.set(True)
        return fn(instance, *args, **kwargs)

    import anyio.to_thread  # only in the kernel's process, never in a worker

    return await anyio.to_thread.run_sync(call)
