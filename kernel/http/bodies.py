"""Reading what an HTTP client sends, so that no malformed request becomes a 500: a JSON
body (bytes, encoding, charset, compression, depth, numbers, strings) and query
parameters, each refused with :class:`BadRequest` naming what was wrong. Shared by the
dashboard's control API and the job API."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from aiohttp import web

DEFAULT_DEPTH = 32  # how deep objects and lists may nest in a body (custom.api.maxDepth)
BIGGEST = 2**53  # integers in queries, and numbers a job's options hold, stay below this


class BadRequest(Exception):
    """A request the server refuses: ``status`` (4xx), and ``field`` where one is at
    fault (a JSON path such as ``args.0``, or a query parameter's name)."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


async def read_json(request: web.Request, *, max_depth: int = DEFAULT_DEPTH, timeout: float = 30.0) -> Any:
    """The request's body as JSON: UTF-8, at most ``max_depth`` deep, finite numbers, strings
    that are text (no lone surrogates). The body must arrive within ``timeout`` seconds.

    :raises BadRequest: what is wrong, and where.
    """
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise BadRequest(f"the body must not be compressed (Content-Encoding {encoding[:40]!r})", status=415)
    # The body is read as JSON whatever its Content-Type says (curl -d sends a form's type,
    # a bare client octet-stream): what is not JSON is refused below, naming why.
    charset = request.charset
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise BadRequest(f"the body must be UTF-8 JSON, not charset {charset[:40]!r}", status=415)
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise BadRequest(f"the body did not arrive within {timeout:g} s", status=408) from None
    except web.HTTPException:
        raise  # 413 over the size limit: aiohttp's own answer
    except Exception as exc:  # a body cut short, bad chunking, a garbage gzip stream...
        raise BadRequest(f"the body could not be read: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadRequest(f"the body nests deeper than {max_depth}") from None
    except BadRequest:
        raise
    except ValueError as exc:  # not JSON, or an integer of thousands of digits
        raise BadRequest(f"the body is not JSON: {str(exc)[:200]}") from None
    check_plain(value, max_depth)
    return value


def _no_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number (numbers must be finite)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"the number {text[:40]} is out of range (numbers must be finite)")
    return value


def check_plain(value: Any, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` and strings (or keys) that are not text.

    :raises BadRequest: naming the path of the first one at fault (``args.0.name``).
    """
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) > max_depth:
            raise BadRequest(f"the body nests deeper than {max_depth}", field=_path(path[:1]) or None)
        if isinstance(item, str):
            _text(item, path)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _text(key, (*path, key))
                stack.append((inner, (*path, key)))
        elif isinstance(item, list):
            stack.extend((inner, (*path, str(i))) for i, inner in enumerate(item))


def _text(value: str, path: tuple[str, ...]) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        where = _path(path)
        raise BadRequest(f"{where or 'the body'} holds a lone surrogate, which is not text",
                         field=where or None) from None


def _path(path: tuple[str, ...]) -> str:
    return ".".join(p.encode("utf-8", "replace").decode() for p in path)


def int_param(request: web.Request, name: str, default: int, low: int = 0, high: int = BIGGEST) -> int:
    """Query parameter ``name`` as an integer ``low``..``high`` (ASCII digits only).

    :raises BadRequest: naming it.
    """
    raw = request.query.get(name)
    if raw is None:
        return default
    text = raw.strip()
    body = text[1:] if text.startswith("-") else text
    if not (body.isascii() and body.isdigit()) or len(body) > 20 or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be an integer {low}-{high}, not {raw[:40]!r}", field=name)
    return int(text)
