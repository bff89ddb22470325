"""Finding service folders, ordering them, and importing their entry classes.

A service folder that is part of an importable package (``services/examples/x`` on
``sys.path``) is imported under its real dotted name; any other folder under a
synthetic package name (see :mod:`kernel.packages`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import DependencyError, ManifestError, ServiceLoadError
from .manifest import MANIFEST_FILE, ServiceSpec, read_manifest
from .packages import SYNTHETIC_ROOT, plan_package
from .service import BaseService


def discover(paths: Iterable[Path | str], builtin: Iterable[Path] = ()) -> list[ServiceSpec]:
    """Every service folder under ``builtin`` and ``paths``, in a stable order.

    A path is either a service folder itself (it holds ``config.json``) or a folder
    searched recursively for service folders. The same folder reached twice counts once.
    A folder from ``paths`` replaces a built-in service of the same name (a customised
    copy); two folders from ``paths`` claiming one name are a :class:`DependencyError`.
    """
    specs: list[ServiceSpec] = []
    seen: set[Path] = set()

    def add(folder: Path, is_builtin: bool) -> None:
        real = folder.resolve()
        if real not in seen:
            seen.add(real)
            specs.append(read_manifest(folder, builtin=is_builtin))

    for folder in builtin:
        add(Path(folder), True)
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            raise ManifestError(root, [("", "services path is not a folder (or does not exist)")])
        found = _service_folders(root)
        if not found:
            _log().warning(f"no service found in {root}: a service is a folder with a config.json manifest "
                           "(and a service.py)", path=str(root))
        for folder in found:
            add(folder, False)

    by_name: dict[str, ServiceSpec] = {}
    for spec in specs:
        other = by_name.get(spec.name)
        if other is not None and not (other.builtin and not spec.builtin):
            raise DependencyError(
                f"two services are named {spec.name!r}: {other.path} and {spec.path}",
                [spec.name],
            )
        by_name[spec.name] = spec  # a user's folder replaces a built-in of that name
    return [s for s in specs if by_name[s.name] is s]


def _service_folders(root: Path) -> list[Path]:
    if (root / MANIFEST_FILE).is_file():
        return [root]
    if (root / "service.py").is_file():
        _log().warning(f"skipped {root}: it has a service.py but no {MANIFEST_FILE}; a service folder needs "
                       f"one, even {{}} (the name is the folder's)", path=str(root))
    found: list[Path] = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith((".", "_")):
            found.extend(_service_folders(child))
    return found


def _log() -> Any:
    import structlog  # here, not at import: workers import this module's neighbours

    return structlog.get_logger("kernel")


def order(specs: Sequence[ServiceSpec]) -> list[ServiceSpec]:
    """Topological order of ``specs``: kernel-mode services first, then the rest.

    Ties keep discovery order. Raises :class:`DependencyError` naming the services for
    a missing dependency, a kernel-mode service that depends on a normal one, or a cycle.
    """
    by_name = {s.name: s for s in specs}
    for spec in specs:
        for dep in spec.manifest.dependencies:
            if dep not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                raise DependencyError(
                    f"service {spec.name!r} ({spec.path}) depends on {dep!r}, "
                    f"which is not known (known services: {known})",
                    [spec.name, dep],
                )
            if spec.manifest.kernel_mode and not by_name[dep].manifest.kernel_mode:
                raise DependencyError(
                    f"kernel-mode service {spec.name!r} depends on {dep!r}, which is not "
                    "kernel-mode: kernel-mode services start before all others",
                    [spec.name, dep],
                )
    index = {s.name: i for i, s in enumerate(specs)}
    result: list[ServiceSpec] = []
    done: set[str] = set()
    for kernel_mode in (True, False):
        group = [s for s in specs if s.manifest.kernel_mode is kernel_mode]
        pending = {s.name: set(s.manifest.dependencies) - done for s in group}
        while pending:
            ready = sorted((n for n, deps in pending.items() if not deps), key=index.__getitem__)
            if not ready:
                cycle = _find_cycle({n: by_name[n].manifest.dependencies for n in pending})
                raise DependencyError(
                    "dependency cycle: " + " -> ".join(cycle), sorted(set(cycle))
                )
            for name in ready:
                del pending[name]
                done.add(name)
                result.append(by_name[name])
            for deps in pending.values():
                deps.difference_update(ready)
    return result


def _find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One cycle in ``graph`` (every node of which is on or leads to a cycle)."""
    start = min(graph)
    path: list[str] = []
    node = start
    while node not in path:
        path.append(node)
        node = min(d for d in graph[node] if d in graph)
    return [*path[path.index(node) :], node]


def plan_packages(specs: Iterable[ServiceSpec]) -> dict[str, str]:
    """Every service's package name (service name -> dotted name), decided before any
    service starts and importing nothing, so workers started early can import every
    service later."""
    return {spec.name: package_of(spec) for spec in specs}


_roots: dict[Path, str] = {}  # a package's folder -> its dotted name, where they differ


def add_package_root(package: str) -> None:
    """Know the folder of the installed package ``package`` and of each parent package.

    An installation may map a folder under another name (the built-in ``services/``
    folder is ``microkernel.services``), which walking up the folders cannot tell;
    service folders inside a known package are imported under its name.
    """
    while package:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return
        for location in spec.submodule_search_locations:
            _roots[Path(location).resolve()] = package
        package = package.rpartition(".")[0]


def _real_package(spec: ServiceSpec) -> str | None:
    """The folder's dotted name when it is part of a package importable from sys.path."""
    folder = spec.folder.resolve()
    if not (folder / "__init__.py").is_file():
        return None
    parts = [folder.name]
    top = folder.parent
    while top not in _roots and (top / "__init__.py").is_file():
        parts.insert(0, top.name)
        top = top.parent
    if folder in _roots:
        parts = [_roots[folder]]
    elif top in _roots:
        parts.insert(0, _roots[top])
    dotted = ".".join(parts)
    try:
        found = importlib.util.find_spec(dotted)
    except (ImportError, ValueError):
        return None
    if found is not None and found.origin and Path(found.origin).parent == folder:
        return dotted
    return None


def package_of(spec: ServiceSpec) -> str:
    """The dotted name ``spec.folder`` is imported under: its real one when it is part of
    an importable package, else a synthetic one (planned here, imported on first use)."""
    real = _real_package(spec)
    if real is not None:
        return real
    package = f"{SYNTHETIC_ROOT}.{re.sub(r'[^0-9A-Za-z_]', '_', spec.name)}"
    plan_package(package, str(spec.folder.resolve()))
    return package


def load_entry(spec: ServiceSpec, package: str | None = None) -> type[BaseService]:
    """Import ``spec``'s module (in ``package``, from :func:`plan_packages`, or worked
    out here) and return its service class.

    Raises :class:`ServiceLoadError` naming the service and folder when the module
    cannot be imported, the entry does not exist, or it is not a BaseService subclass.
    """
    entry = spec.manifest.entry
    package = package or package_of(spec)
    if entry is None:
        module_part = "service" if (spec.folder / "service.py").is_file() else ""
        attr = None
    else:
        module_part, attr = entry.split(":")
    modname = f"{package}.{module_part}" if module_part else package
    if entry is None and not module_part and not (spec.folder / "__init__.py").is_file():
        raise ServiceLoadError(
            spec.name, spec.path, "no 'entry' in the manifest and no service.py in the folder"
        )
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name is not None and modname.startswith(exc.name):
            reason = f"entry module {module_part!r} not found in {spec.folder}"
        else:
            reason = f"importing {module_part or '__init__'} failed: {exc}"
        raise ServiceLoadError(spec.name, spec.path, reason) from exc
    except Exception as exc:
        reason = f"importing {module_part or '__init__'} failed: {type(exc).__name__}: {exc}"
        raise ServiceLoadError(spec.name, spec.path, reason) from exc

    if attr is None:
        found = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseService)
            and obj.__module__ == module.__name__
        ]
        if len(found) != 1:
            names = ", ".join(c.__name__ for c in found) or "none"
            raise ServiceLoadError(
                spec.name,
                spec.path,
                f"no 'entry' in the manifest and {len(found)} BaseService subclasses in "
                f"{module_part or '__init__'}.py ({names}); set 'entry' to 'module:Class'",
            )
        return found[0]
    cls = getattr(module, attr, None)
    if cls is None:
        raise ServiceLoadError(spec.name, spec.path, f"entry {entry!r}: no {attr!r} in the module")
    if not (inspect.isclass(cls) and issubclass(cls, BaseService)):
        raise ServiceLoadError(
            spec.name, spec.path, f"entry {entry!r} is not a subclass of kernel.BaseService"
        )
    return cls
