"""The async carrier: it reports stimuli to the scheduler and carries out its
instructions on the workers (:mod:`..executors`), and hands callers their futures.

:class:`WorkerPool` (:mod:`.pool`) is the one object; :mod:`.fleet` starts, replaces
and retires workers; :mod:`.handles` holds what a caller holds (:class:`CallFuture`,
:func:`watching`); :mod:`.tally` counts; :mod:`.traffic` carries what running calls
send back; :mod:`.instances` pins ``@distributed`` instances.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.lazy import lazy_face

if TYPE_CHECKING:
    from .handles import CallFuture as CallFuture, Progress as Progress, watching as watching
    from .instances import PinTable as PinTable
    from .operations import ALL as ALL
    from .pool import WorkerPool as WorkerPool
    from .snapshot import CallReport as CallReport, PoolSnapshot as PoolSnapshot, WorkerReport as WorkerReport
    from .tally import Buckets as Buckets, Timings as Timings
    from .traffic import CallTraffic as CallTraffic, Route as Route

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
