"""structlog set-up: a console renderer on a terminal, JSON lines otherwise.

structlog is imported by :func:`configure` only: worker processes read the level with
:func:`resolve_level` and do not load it.
"""

from __future__ import annotations

import logging
import os
import sys

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
