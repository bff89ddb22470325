"""The execution manager: a kernel-mode service that runs heavy work on a pool.

It ships with the kernel as a service (``service.py``) and is the host of one seam, the
executor interface, which executor plugins implement. What a plugin author imports
is here, and documented in the module named beside it:

- :class:`Executor`, :class:`ExecutorInfo`, :class:`WorkerState`, :class:`Attempt`,
  ``ExecutorFactory`` (``executor``): the interface and the attempts it is handed;
- :class:`Runtime`, :class:`CallChannel`, :class:`ErrorInfo` (``runtime``): how the
  executing side runs a decoded call;
- ``protocol`` and ``node_protocol``: the sans-I/O wire protocols;
- ``nodes``: the node seam (:class:`NodeTransport`, :class:`NodeListener`);
- ``hookspecs``: the hooks node types and transports are registered with;
- ``errors``: the exceptions an executor raises, all :class:`kernel.errors.ExecutionError`.

Names load on first use, so worker processes that import only the protocol and the
runtime start fast.

Glossary (each word is used in this sense only):

call
    One request to run a callable or a method, from ``submit``, ``map`` or a
    ``@distributed`` method, with its options (priority, timeout, retries...). It has
    one task id and one future for the caller, whatever happens to it.
attempt
    One try at running a call on one executor (an :class:`Attempt`, what an executor is
    handed). A call that is retried has several; ``future.attempts`` lists those that
    failed (``handles.FailedAttempt``).
task id
    The id of a call, shown in errors, events, logs, ``/api`` and the dashboard.
executor
    One place that runs calls, behind the :class:`Executor` interface: a local worker
    process, an in-process thread pool, a slot of a remote node, a Dask worker.
worker
    An executor as the pool sees it: it has a worker id, a state
    (:class:`WorkerState`) and a width (how many calls it runs at once).
node type
    A kind of executor, registered by a plugin (``local``, ``inmemory``, ``dask``...).
node
    A machine (or process) outside the kernel that lends workers: a ``kernel node``
    agent over websockets, or a Dask cluster. Its workers join the pool.
slot
    One worker process of a remote node; the kernel sees each slot as a worker.
pool
    The execution manager's set of workers and the calls placed on them.
queue
    The calls the pool holds that no worker has started yet (``queued_tasks``).
pinned instance
    A ``@distributed`` instance assigned to one worker (``assign_optimal_worker``); its
    calls run there, on its copy, in order.
replica
    The pickled copy of an unpinned instance that one call runs on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.lazy import lazy_names

if TYPE_CHECKING:
    from . import errors, hookspecs, node_protocol, nodes, protocol
    from .attempt import Attempt, CallWatch
    from .executor import Executor, ExecutorFactory, ExecutorInfo, WorkerState
    from .handles import watching
    from .nodes import NodeListener, NodeTransport
    from .runtime import CallChannel, ErrorInfo, Runtime

_WHERE = {
    "Attempt": "attempt", "Executor": "executor", "ExecutorFactory": "executor", "ExecutorInfo": "executor",
    "WorkerState": "executor", "CallWatch": "attempt", "watching": "handles",
    "NodeListener": "nodes", "NodeTransport": "nodes",
    "CallChannel": "runtime", "ErrorInfo": "runtime", "Runtime": "runtime",
}
_MODULES = ("errors", "hookspecs", "node_protocol", "nodes", "protocol")
__all__ = [
    "Attempt",
    "CallChannel",
    "CallWatch",
    "ErrorInfo",
    "Executor",
    "ExecutorFactory",
    "ExecutorInfo",
    "NodeListener",
    "NodeTransport",
    "Runtime",
    "WorkerState",
    "errors",
    "hookspecs",
    "node_protocol",
    "nodes",
    "protocol",
    "watching",
]


__getattr__ = lazy_names(__name__, _WHERE, _MODULES)


def __dir__() -> list[str]:
    return __all__
