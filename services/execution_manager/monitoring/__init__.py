"""Readers of the pool: load sampling and stats (:mod:`.monitor`, :mod:`.stats`),
recent history (:mod:`.history`), ``kernel status`` (:mod:`.terminal`), and the
dashboard, JSON API and ``/metrics`` (:mod:`.web`, aiohttp only when it is on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.lazy import lazy_face

if TYPE_CHECKING:
    from .history import History as History
    from .monitor import Monitor as Monitor
    from .stats import Stats as Stats, WorkerStats as WorkerStats
    from .terminal import show_status as show_status
    from .web import WebServer as WebServer

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
