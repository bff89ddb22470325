"""The execution manager: a kernel-mode service that runs heavy work on a pool.

It ships with the kernel as a service (``service.py``, settings in ``settings.py``).
Its floors are folders, each with one lazy face, importing only the floors below:

- ``scheduling/``: every decision about calls and workers, sans I/O, standard library only;
- ``wire/``: bytes <-> typed messages, sans I/O (the pipe and the node conversation);
- ``executors/``: the seam executor plugins implement, and all a plugin imports
  (with ``wire``, ``errors`` and ``hookspecs``); ``executors.testing`` is their test kit;
- ``pool/``: the async carrier, which reports stimuli and carries out instructions;
- ``monitoring/``: readers of the pool (stats, history, ``kernel status``, the web).

Beside them: ``errors`` (the exceptions, all :class:`kernel.errors.ExecutionError`),
``hookspecs`` (the hooks node types and transports are registered with), ``events``
(the event bus) and ``commands`` (``kernel status``, ``kernel node``).
``tests/test_architecture.py`` checks the order. Names load on first use, so worker
processes that import only the wire and the runtime start fast.

Glossary (each word is used in this sense only):

call
    One request to run a callable or a method, from ``submit``, ``map`` or a
    ``@distributed`` method, with its options (priority, timeout, retries...). It has
    one task id and one future for the caller, whatever happens to it.
attempt
    One try at running a call on one worker (an :class:`Attempt`, what a worker is
    handed). A call that is retried has several; ``future.attempts`` lists those that
    failed (``pool.handles.FailedAttempt``).
task id
    The id of a call, shown in errors, events, logs, ``/api`` and the dashboard.
worker
    One place that runs calls, behind the ``executors.Worker`` interface: a local
    worker process, an in-process thread pool, a slot of a remote node, a Dask worker.
    It has a worker id, a state (``executors.WorkerState``) and a width (how many calls
    it runs at once). The pool's record of one (``pool.fleet.PoolWorker``) holds the
    plugin's object as its ``backend``.
executor
    The kind of plugin that provides workers (``em_executor_types``, ``executorOptions``,
    the ``executors/`` seam, ``check_executor``); never a class of ours: that name is
    left to :class:`concurrent.futures.Executor`.
node type
    A kind of worker, registered by an executor plugin (``local``, ``inmemory``,
    ``dask``...).
local
    Of the ``local`` node type: worker processes on the kernel's machine (``local-1``...).
in-process
    In the kernel's own process: the in-process worker (``inprocess-0``, threads) that
    takes calls of services that opt in (``inProcess``) while the machine is idle.
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

from kernel.lazy import lazy_face

if TYPE_CHECKING:
    from . import (
        errors as errors,
        executors as executors,
        hookspecs as hookspecs,
        monitoring as monitoring,
        pool as pool,
        scheduling as scheduling,
        wire as wire,
    )
    from .pool import CallFuture as CallFuture, Progress as Progress, watching as watching

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
