"""Service folders imported under synthetic package names, in the kernel and workers.

A service folder that is not part of an importable package is imported as
``_kernel_services.<name>``, a package whose ``__path__`` is the folder. Workers get the
same names through :class:`ServicePackageFinder`, so service classes and instances
pickle by reference across processes. Kept free of pydantic and asyncio: worker
processes import this at start-up.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

SYNTHETIC_ROOT = "_kernel_services"
_packages: dict[str, str] = {}  # synthetic package name -> folder


def plan_package(package: str, folder: str) -> None:
    """Make ``package`` importable from ``folder`` on first use (nothing is imported
    now). A package already planned from another folder is replaced, modules and all
    (a service of that name was loaded from elsewhere)."""
    if _packages.get(package) != folder:
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        _packages[package] = folder
    _ensure_finder()


def service_packages() -> dict[str, str]:
    """Synthetic packages planned so far (name -> folder), for worker processes."""
    return dict(_packages)


def _package_spec(package: str, folder: str) -> importlib.machinery.ModuleSpec:
    init = Path(folder) / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[folder])
        if spec is None:  # pragma: no cover - only for a file importlib refuses
            raise ImportError(f"cannot make a package of {folder}")
        return spec
    spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
    spec.submodule_search_locations = [folder]
    return spec


class ServicePackageFinder(importlib.abc.MetaPathFinder):
    """Imports the synthetic service packages on demand (installed in workers)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == SYNTHETIC_ROOT:
            return importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        folder = _packages.get(fullname)
        return None if folder is None else _package_spec(fullname, folder)


def install_finder(packages: Mapping[str, str]) -> None:
    """In a worker: make the kernel's service packages importable on first use."""
    _packages.update(packages)
    _ensure_finder()


def _ensure_finder() -> None:
    if not any(isinstance(f, ServicePackageFinder) for f in sys.meta_path):
        sys.meta_path.append(ServicePackageFinder())
