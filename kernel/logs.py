"""structlog set-up: a console renderer on a terminal, JSON lines otherwise.

structlog is imported by :func:`configure` only: worker processes read the level with
:func:`resolve_level` and do not load it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

LEVEL_ENV = "KERNEL_LOG_LEVEL"


def resolve_level(level: str | None = None) -> tuple[str, int]:
    """``level``, else ``$KERNEL_LOG_LEVEL``, else ``info``, as (NAME, number).

    :raises ValueError: not a level name.
    """
    name = (level or os.environ.get(LEVEL_ENV) or "info").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {name!r} (from --log-level or ${LEVEL_ENV})")
    return name, numeric


def configure(level: str | None = None, *, json: bool | None = None) -> None:
    """Configure structlog for the kernel's process.

    ``level`` defaults to ``$KERNEL_LOG_LEVEL`` or ``info``; ``json`` defaults to
    "stderr is not a terminal".
    """
    import structlog

    name, numeric = resolve_level(level)
    os.environ[LEVEL_ENV] = name.lower()  # worker processes started from here log at the same level
    as_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


class Throttle:
    """At most ``most`` log lines per ``per`` seconds for each kind of event, so that a
    flood of bad requests cannot fill the disk; what was held back is counted and said
    in the next line let through (``suppressed``)."""

    def __init__(self, most: int = 20, per: float = 10.0) -> None:
        self.most, self.per = most, per
        self._windows: dict[str, tuple[float, int, int]] = {}  # kind -> (window start, said, held back)

    def __call__(self, kind: str) -> int | None:
        """None: hold this line back; else say it, with the count held back before it."""
        now = time.monotonic()
        start, said, held = self._windows.get(kind, (now, 0, 0))
        if now - start >= self.per:
            start, said = now, 0
        if said >= self.most:
            self._windows[kind] = (start, said, held + 1)
            return None
        self._windows[kind] = (start, said + 1, 0)
        return held


def log_throttled(logger: Any, throttle: Throttle, level: str, event: str, **fields: Any) -> None:
    """``logger.<level>(event, **fields)`` unless ``throttle`` holds it back."""
    held = throttle(event)
    if held is None:
        return
    if held:
        fields["suppressed"] = held
    getattr(logger, level)(event, **fields)
