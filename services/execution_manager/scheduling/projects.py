"""Project limits: at most so many calls of one project run at once (``projectLimits``,
``set_project_limit``). The calls over a limit wait in the queue; other projects' calls
go past them."""

from __future__ import annotations

from collections.abc import Callable, Mapping


class Projects:
    """How many calls of each project run, against each project's limit."""

    __slots__ = ("limits", "running")

    def __init__(self, limits: Mapping[str, int] | None = None) -> None:
        self.limits: dict[str, int] = dict(limits or {})
        self.running: dict[str, int] = {}  # project -> calls sent and not yet over

    def __repr__(self) -> str:
        return f"<Projects limits={self.limits} running={self.running}>"

    def set_limit(self, project: str, limit: int | None) -> None:
        """At most ``limit`` calls of ``project`` at once (None: no limit)."""
        if limit is None:
            self.limits.pop(project, None)
        else:
            self.limits[project] = limit

    def has_room(self, project: str | None) -> bool:
        """Whether one more call of ``project`` may start (None: no project, always)."""
        if project is None:
            return True
        limit = self.limits.get(project)
        return limit is None or self.running.get(project, 0) < limit

    @property
    def eligible(self) -> Callable[[str | None], bool] | None:
        """:meth:`has_room` for the queue to skip full projects by; None while no project
        has a limit (nothing to skip)."""
        return self.has_room if self.limits else None

    def started(self, project: str) -> None:
        self.running[project] = self.running.get(project, 0) + 1

    def ended(self, project: str) -> None:
        left = self.running[project] - 1
        if left:
            self.running[project] = left
        else:  # not kept at 0: project names come from callers, and could be countless
            del self.running[project]
