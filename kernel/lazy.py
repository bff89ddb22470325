"""A package's public names, imported on first use (PEP 562's module ``__getattr__``),
so that a process importing one small module of the package does not pay for all.

A package's face writes each public name once, as a re-export under
``if TYPE_CHECKING:`` (which type checkers and readers see)::

    if TYPE_CHECKING:
        from . import errors as errors
        from .interface import Worker as Worker, WorkerInfo as WorkerInfo

    __getattr__, __dir__ = lazy_face(__name__, __file__)

and :func:`lazy_face` reads that block to know where each name lives.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any

_BLOCK = re.compile(r"^if TYPE_CHECKING:\n((?:[ \t]+.*\n|\n)+)", re.M)
_IMPORT = re.compile(r"^from \.([\w.]*) import (.+)$")


def lazy_names(package: str, where: Mapping[str, str], modules: Collection[str] = ()) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: ``where`` maps a public name to the submodule
    defining it; ``modules`` are submodules handed out themselves. A name found once is
    kept in the package, so the next lookup costs nothing."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return importlib.import_module(f".{name}", package)
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


def read_face(source: str) -> tuple[dict[str, str], list[str]]:
    """The names a face's ``if TYPE_CHECKING:`` block re-exports: ``{name: submodule}``
    and the submodules handed out themselves (``from . import x as x``)."""
    block = _BLOCK.search(source)
    if block is None:
        raise ValueError("a lazy face needs an `if TYPE_CHECKING:` block of re-exports")
    text = re.sub(r"\(([^)]*)\)", lambda m: " ".join(m.group(1).split()), block.group(1))
    where: dict[str, str] = {}
    modules: list[str] = []
    for line in text.splitlines():
        found = _IMPORT.match(line.strip())
        if found is None:
            continue
        for item in found.group(2).split(","):
            name = item.split(" as ")[-1].strip()
            if not name:
                continue
            if " as " in item and item.split(" as ")[0].strip() != name:
                raise ValueError(f"a lazy face re-exports names as they are, not {item.strip()!r}")
            if found.group(1):
                where[name] = found.group(1)
            else:
                modules.append(name)
    return where, modules


def lazy_face(package: str, file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` of the package whose ``__init__`` is ``file``,
    from its ``if TYPE_CHECKING:`` re-exports (see the module docstring)."""
    with open(file, encoding="utf-8") as source:
        where, modules = read_face(source.read())
    names = sorted([*where, *modules])
    return lazy_names(package, where, modules), lambda: list(names)
