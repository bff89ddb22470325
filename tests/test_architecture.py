"""The import graph keeps the floors: no circles, the kernel imports nothing of the
execution manager, and no plugin imports another.

Read statically with grimp: every import counts, function-level and ``TYPE_CHECKING``
ones included (a circle through annotations is still a circle in the design).
"""

from __future__ import annotations

import grimp
import pytest

ROOTS = ("kernel", "microkernel.services", "microkernel.plugins")
PLUGINS = ("local", "inmemory", "websocket", "dask")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*ROOTS, exclude_type_checking_imports=False)


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
