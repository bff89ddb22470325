"""The import graph keeps the floors: no circles, the kernel imports nothing of the
execution manager, no plugin imports another, the execution manager's folders import
only downwards, its sans-I/O floors reach no I/O library, and plugins import only the
seam's faces.

Read statically with grimp: every import counts, function-level and ``TYPE_CHECKING``
ones included (a circle through annotations is still a circle in the design).
"""

from __future__ import annotations

import importlib.util

import grimp
import pytest

from kernel.lazy import read_face

ROOTS = ("kernel", "microkernel.services", "microkernel.plugins")
PLUGINS = ("local", "inmemory", "websocket", "dask")
EM = "microkernel.services.execution_manager"
# Top to bottom; a floor imports only those below it (scheduling and wire know nothing
# of each other). The modules beside the floors (settings, events, errors, hookspecs)
# are not in a layer: a chain through them still counts.
FLOORS = ({"service", "commands"}, "monitoring", "pool", "executors", {"scheduling", "wire"})
SANS_IO = ("scheduling", "wire")
IO = ("asyncio", "psutil", "websockets", "aiohttp", "anyio", "socket", "selectors", "threading", "subprocess")
# What a plugin may import of the execution manager: the seam's face, the wire, the
# errors and the hookspecs.
PLUGIN_FACES = (f"{EM}.executors", f"{EM}.wire", f"{EM}.errors", f"{EM}.hookspecs")


def with_faces(graph: grimp.ImportGraph) -> grimp.ImportGraph:
    """A lazy face (:func:`kernel.lazy.lazy_face`) imports its modules on first use,
    which no import statement shows: count an import of the face as one of each."""
    for package in sorted(graph.modules):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None or not spec.origin.endswith("__init__.py"):
            continue
        with open(spec.origin, encoding="utf-8") as file:
            source = file.read()
        if "lazy_face(" not in source:
            continue
        where, modules = read_face(source)
        for module in {*where.values(), *modules}:
            graph.add_import(importer=package, imported=f"{package}.{module}")
    return graph


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return with_faces(grimp.build_graph(*ROOTS, exclude_type_checking_imports=False))


def test_no_import_circles(graph: grimp.ImportGraph) -> None:
    # An import a -> b closes a circle when b leads back to a.
    closing = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                line = graph.get_import_details(importer=importer, imported=imported)[0]["line_number"]
                closing.append(f"{importer}:{line} -> " + " -> ".join(back))
    assert not closing, "import circles:\n" + "\n".join(closing)


def test_the_kernel_imports_nothing_of_the_execution_manager_or_plugins(graph: grimp.ImportGraph) -> None:
    for other in ("microkernel.services", "microkernel.plugins"):
        chains = graph.find_shortest_chains(importer="kernel", imported=other, as_packages=True)
        assert not chains, f"kernel imports {other}: {sorted(chains)}"


def test_no_plugin_imports_another(graph: grimp.ImportGraph) -> None:
    for plugin in PLUGINS:
        for other in PLUGINS:
            if other != plugin:
                chains = graph.find_shortest_chains(
                    importer=f"microkernel.plugins.{plugin}", imported=f"microkernel.plugins.{other}", as_packages=True
                )
                assert not chains, f"plugin {plugin} imports plugin {other}: {sorted(chains)}"


def test_the_execution_manager_imports_no_plugin(graph: grimp.ImportGraph) -> None:
    chains = graph.find_shortest_chains(
        importer="microkernel.services.execution_manager", imported="microkernel.plugins", as_packages=True
    )
    assert not chains, f"the execution manager imports plugins: {sorted(chains)}"


def test_the_execution_managers_floors_import_only_downwards(graph: grimp.ImportGraph) -> None:
    illegal = graph.find_illegal_dependencies_for_layers(layers=FLOORS, containers={EM})
    found = [f"{d.importer} -> {d.imported}: " + "; ".join(" -> ".join(r.heads | r.tails) for r in d.routes)
             for d in illegal]
    assert not found, "a floor imports one above it:\n" + "\n".join(sorted(found))


def test_no_import_chain_leads_from_the_sans_io_floors_to_io() -> None:
    # Runtime imports only (a TYPE_CHECKING import loads nothing), standard library included.
    graph = with_faces(grimp.build_graph(*ROOTS, include_external_packages=True, exclude_type_checking_imports=True))
    for floor in SANS_IO:
        for library in IO:
            if library not in graph.modules:  # nothing of ours imports it at all
                assert library not in IO[:4], f"{library} is missing from the graph: the check would be vacuous"
                continue
            chains = graph.find_shortest_chains(importer=f"{EM}.{floor}", imported=library, as_packages=True)
            assert not chains, f"{floor}/ reaches {library}: {sorted(chains)}"


def test_plugins_import_only_the_seams_faces(graph: grimp.ImportGraph) -> None:
    wrong = []
    for plugin in PLUGINS:
        for module in sorted(graph.find_children(f"microkernel.plugins.{plugin}") | {f"microkernel.plugins.{plugin}"}):
            for imported in sorted(graph.find_modules_directly_imported_by(module)):
                if not imported.startswith(EM):
                    continue
                # wire is all public (sans-I/O messages); of the seam only the face is.
                if imported in PLUGIN_FACES or imported.startswith(f"{EM}.wire."):
                    continue
                line = graph.get_import_details(importer=module, imported=imported)[0]["line_number"]
                wrong.append(f"{module}:{line} imports {imported}")
    assert not wrong, "plugins import past the seam's faces:\n" + "\n".join(wrong)


def test_monitoring_reads_the_pools_snapshot_and_never_reaches_in() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "services" / "execution_manager"
    reaching = []
    for source in sorted([*(root / "monitoring").rglob("*.py"), root / "service.py", root / "commands.py"]):
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if re.search(r"\.(sched|fleet)\b", line):
                reaching.append(f"{source.relative_to(root)}:{number}: {line.strip()}")
    assert not reaching, "reaches into the pool's scheduler or fleet:\n" + "\n".join(reaching)


SOURCES = ("kernel", "services", "plugins")


def test_no_two_classes_in_sibling_modules_share_a_name() -> None:
    import ast
    from collections import defaultdict
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    by_package: dict[Path, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for top in SOURCES:
        for source in (root / top).rglob("*.py"):
            for node in ast.parse(source.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    by_package[source.parent][node.name].append(source.name)
    shared = [f"{package.relative_to(root)}: {name} in {', '.join(sorted(files))}"
              for package, names in sorted(by_package.items()) for name, files in sorted(names.items())
              if len(files) > 1]
    assert not shared, "classes of one name in sibling modules:\n" + "\n".join(shared)


def test_every_dotted_name_a_docstring_or_comment_gives_exists() -> None:
    """A path of ours in the sources (``microkernel.x.y.Z`` anywhere but a logger's
    name, ``kernel.x`` in a Sphinx role) names a module, or a name in one, that is there."""
    import importlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    missing = []
    for top in SOURCES:
        for source in sorted((root / top).rglob("*.py")):
            for number, line in enumerate(source.read_text().splitlines(), 1):
                if "getLogger(" in line:
                    continue
                found = re.findall(r"\b(microkernel\.[A-Za-z_][\w.]*[A-Za-z_0-9])", line)
                found += re.findall(r":\w+:`~?(kernel\.[A-Za-z_][\w.]*[A-Za-z_0-9])`", line)
                missing += [f"{source.relative_to(root)}:{number}: {dotted}" for dotted in found
                            if not _resolves(importlib, dotted)]
                for relative in re.findall(r":\w+:`~?(\.+[A-Za-z_][\w.]*[A-Za-z_0-9])`", line):
                    if not any(_resolves(importlib, candidate) for candidate in _near(source, root, relative)):
                        missing.append(f"{source.relative_to(root)}:{number}: {relative}")
    assert not missing, "names that are not there:\n" + "\n".join(missing)


def _near(source, root, relative: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Where a relative Sphinx reference may point: from the module's package (``..``:
    its parent) or from the module itself."""
    parts = list(source.relative_to(root).with_suffix("").parts)
    if parts[0] in ("services", "plugins"):
        parts = ["microkernel", *parts]
    module = ".".join(p for p in parts if p != "__init__")
    package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
    dots = len(relative) - len(relative.lstrip("."))
    base = package.split(".")[: len(package.split(".")) - (dots - 1)]
    return [".".join([*base, relative.lstrip(".")]), f"{module}.{relative.lstrip('.')}"]


def _resolves(importlib, dotted: str) -> bool:  # type: ignore[no-untyped-def]
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False
