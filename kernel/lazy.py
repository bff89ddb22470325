"""A package's public names, imported on first use (PEP 562's module ``__getattr__``),
so that a process importing one small module of the package does not pay for all."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any


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
