"""What the web layer reads and operates of the execution manager.

The service starts the web layer and hands itself over; the web layer sees it only
through :class:`Manager`, so it does not import the service back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kernel.interfaces import ServiceHost

    from ...events import EventBus
    from ...executors import NodeListener
    from ...pool import WorkerPool
    from ..monitor import Monitor
    from ..stats import Stats


class Manager(Protocol):
    """The execution manager, as the dashboard, the JSON API and ``/metrics`` see it."""

    name: str
    events: EventBus
    pool: WorkerPool | None
    monitor: Monitor | None
    listener: NodeListener | None

    @property
    def kernel(self) -> ServiceHost: ...

    async def get_stats(self) -> Stats:
        """The pool's statistics (as ``em.get_stats()``)."""
        ...

    def set_project_limit(self, project: str, limit: int | None) -> None:
        """At most ``limit`` concurrent calls for ``project`` (None: no limit)."""
        ...
