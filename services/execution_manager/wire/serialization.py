"""Pickling calls, results and exceptions, with errors that name what failed.

Plain pickle first (several times faster per call); cloudpickle when plain pickle
fails (lambdas, local functions) or when the bytes refer to ``__main__``, which a
worker cannot import by name: such functions and classes then travel by value.
"""

from __future__ import annotations

import pickle
import struct
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import SerializationError

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_pickle_dumps = pickle.dumps
loads = pickle.loads


def _cloud_dumps(obj: Any, protocol: int) -> bytes:
    import cloudpickle  # only when plain pickle cannot: keeps worker start-up lean

    data: bytes = cloudpickle.dumps(obj, protocol=protocol)
    return data


def dumps(obj: Any) -> bytes:
    try:
        data = _pickle_dumps(obj, protocol=_PROTOCOL)
    except Exception:
        return _cloud_dumps(obj, protocol=_PROTOCOL)
    if mentions_main(data):
        return _cloud_dumps(obj, protocol=_PROTOCOL)
    return data


_MAIN = b"__main__"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FRAME = 0x95  # pickle protocol 4+: FRAME, 8-byte length, then that many bytes of opcodes
# Data that pickle writes outside frames when it is large, opcode -> its length field:
# BINBYTES, BINUNICODE (4-byte length); BINBYTES8, BINUNICODE8, BYTEARRAY8 (8-byte).
_LARGE = {0x42: _U32, 0x58: _U32, 0x8E: _U64, 0x8D: _U64, 0x96: _U64}


def mentions_main(data: bytes) -> bool:
    """Whether a pickle (protocol 4+) may refer to something in ``__main__``.

    Module names are short strings inside frames; a large bytes, str or bytearray is
    written between frames and is data, never a reference. So the frames are searched
    and such data is skipped: a 1 MiB argument costs a few header reads, not a 1 MiB
    scan (0.46 ms here). Anything else between frames, or a stream this does not
    follow, falls back to searching everything that is left.
    """
    if len(data) < 65536 or data[0] != 0x80:
        return _MAIN in data
    pos, end = 2, len(data)
    while pos < end:
        op = data[pos]
        if op == _FRAME and pos + 9 <= end:
            start = pos + 9
            pos = start + _U64.unpack_from(data, pos + 1)[0]
            if data.find(_MAIN, start, pos) >= 0:
                return True
        elif (field := _LARGE.get(op)) is not None and pos + 1 + field.size <= end:
            pos += 1 + field.size + field.unpack_from(data, pos + 1)[0]
        else:
            return data.find(_MAIN, pos) >= 0
    return pos != end and _MAIN in data  # a length this misread: search it all


def short_repr(obj: Any, limit: int = 60) -> str:
    """``repr(obj)``, cut to ``limit`` characters (never raises)."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _culprit(parts: Iterable[tuple[str, Any]]) -> tuple[str, Any, BaseException] | None:
    for name, value in parts:
        try:
            dumps(value)
        except Exception as exc:
            return name, value, exc
    return None


def _instance_parts(instance: Any) -> list[tuple[str, Any]]:
    state = instance.__getstate__() if hasattr(instance, "__getstate__") else None
    if isinstance(state, Mapping):
        return [(f"attribute {k!r} of the {type(instance).__name__} instance", v) for k, v in state.items()]
    return [(f"the {type(instance).__name__} instance", instance)]


def dumps_call(
    label: str,
    parts: tuple[Any, ...],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    instance: Any = None,
    fn: Any = None,
) -> bytes:
    """Pickle a call's payload; on failure name the argument (or attribute) at fault."""
    try:
        return dumps(parts)
    except Exception as exc:
        candidates: list[tuple[str, Any]] = []
        if fn is not None:
            candidates.append((f"the callable {short_repr(fn)}", fn))
        if instance is not None:
            candidates.extend(_instance_parts(instance))
        candidates.extend((f"argument {i} ({short_repr(a)})", a) for i, a in enumerate(args))
        candidates.extend((f"keyword argument {k!r} ({short_repr(v)})", v) for k, v in kwargs.items())
        found = _culprit(candidates)
        if found is None:
            raise SerializationError(f"cannot pickle the call {label}: {exc}") from exc
        name, value, cause = found
        raise SerializationError(
            f"cannot pickle {name} of {label}: type {type(value).__module__}."
            f"{type(value).__qualname__}: {cause}"
        ) from cause


def dumps_result(label: str, result: Any) -> bytes:
    """Pickle a call's result; on failure say which call and what type."""
    try:
        return dumps(result)
    except Exception as exc:
        kind = type(result)
        raise SerializationError(
            f"cannot pickle the result of {label}: type {kind.__module__}.{kind.__qualname__}: {exc}"
        ) from exc


def dumps_exception(exc: BaseException) -> bytes | None:
    """The pickled exception, or None when it does not survive a round trip."""
    try:
        data = dumps(exc)
        pickle.loads(data)
    except Exception:
        return None
    return data


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
