"""What an exception raised by a user's code says, in one or two lines: its type, its
message and the user's own frame (file:line, the function and its source line), never
the kernel's frames. ``ServiceStartError`` and the kernel's log use it, so that
``assert 1 + 1 == 3`` in a service's ``start()`` reads as what it is."""

from __future__ import annotations

import linecache
import os
import sys
import sysconfig
import traceback
from functools import cache

OURS = ("kernel", "microkernel")


def _ours(filename: str) -> bool:
    """Whether ``filename`` is a module of this kernel's (its packages, its plugins')."""
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in OURS and getattr(module, "__file__", None) == filename:
            return True
    return False


@cache
def _libraries() -> tuple[str, ...]:
    """Folders whose frames are never the user's: the standard library, installed packages."""
    roots = {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(os.path.join(r, "") for r in roots)


def _shown(filename: str) -> str:
    """``filename`` relative to the current folder when it is inside it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        return filename
    return filename if rel.startswith("..") else rel


def user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The deepest frame of ``exc``'s traceback in the user's code (else the deepest)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    libraries = _libraries()
    for frame in reversed(frames):
        name = frame.filename
        if not name.startswith("<") and not name.startswith(libraries) and not _ours(name):
            return frame
    return frames[-1]


def where(exc: BaseException) -> str | None:
    """``file:line, in function: source`` of the user's frame that raised ``exc``."""
    if isinstance(exc, SyntaxError) and exc.filename:
        source = (exc.text or linecache.getline(exc.filename, exc.lineno or 0)).strip()
        return f"{_shown(exc.filename)}:{exc.lineno}" + (f": {source}" if source else "")
    frame = user_frame(exc)
    if frame is None:
        return None
    source = (frame.line or "").strip()
    return f"{_shown(frame.filename)}:{frame.lineno}, in {frame.name}" + (f": {source}" if source else "")


def describe(exc: BaseException) -> str:
    """``Type: message`` and, on the next line, where the user's code raised it.

    An error of the kernel's own (its message is complete) is told as it is, with the
    frame of the user's error that caused it, if any.
    """
    if type(exc).__module__.partition(".")[0] in OURS:
        head, origin = str(exc), exc.__cause__
    else:
        text = str(exc)
        head, origin = (f"{type(exc).__name__}: {text}" if text else type(exc).__name__), exc
    at = where(origin) if origin is not None else None
    return f"{head}\n  at {at}" if at else head
