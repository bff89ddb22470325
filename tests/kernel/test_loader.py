from __future__ import annotations

from pathlib import Path

import pytest

from kernel.errors import DependencyError, ManifestError, ServiceLoadError
from kernel.loader import discover, load_entry, order
from tests.conftest import write_service

PLAIN = """
from kernel import BaseService
class Svc(BaseService):
    pass
"""


def names(specs: list) -> list[str]:
    return [s.name for s in specs]


def test_discovers_recursively_over_several_paths_once_each(tmp_path: Path) -> None:
    write_service(tmp_path / "a", "one", {})
    write_service(tmp_path / "a" / "nested", "two", {})
    write_service(tmp_path / "b", "three", {})
    specs = discover([tmp_path / "a", tmp_path / "b", tmp_path / "a" / "one"])
    assert names(specs) == ["two", "one", "three"]  # sorted: nested/ before one/


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"(?s)does-not-exist.*not a folder"):
        discover([tmp_path / "does-not-exist"])


def test_duplicate_names_name_both_files(tmp_path: Path) -> None:
    write_service(tmp_path, "one", {"name": "same"})
    write_service(tmp_path, "two", {"name": "same"})
    with pytest.raises(DependencyError, match=r"two services are named 'same': .*one.*two") as info:
        discover([tmp_path])
    assert info.value.services == ["same"]


def test_order_is_topological_with_kernel_mode_first(tmp_path: Path) -> None:
    write_service(tmp_path, "app", {"dependencies": ["db", "cache"]})
    write_service(tmp_path, "cache", {"dependencies": ["db"]})
    write_service(tmp_path, "db", {})
    write_service(tmp_path, "zcore", {"kernelMode": True})
    assert names(order(discover([tmp_path]))) == ["zcore", "db", "cache", "app"]


def test_cycle_names_the_services(tmp_path: Path) -> None:
    write_service(tmp_path, "a", {"dependencies": ["b"]})
    write_service(tmp_path, "b", {"dependencies": ["c"]})
    write_service(tmp_path, "c", {"dependencies": ["a"]})
    write_service(tmp_path, "d", {})
    with pytest.raises(DependencyError, match=r"dependency cycle: a -> b -> c -> a") as info:
        order(discover([tmp_path]))
    assert info.value.services == ["a", "b", "c"]


def test_missing_dependency_names_both(tmp_path: Path) -> None:
    write_service(tmp_path, "a", {"dependencies": ["ghost"]})
    with pytest.raises(DependencyError, match=r"'a' .* depends on 'ghost', which is not known \(known services: a\)"):
        order(discover([tmp_path]))


def test_kernel_mode_cannot_depend_on_normal(tmp_path: Path) -> None:
    write_service(tmp_path, "core", {"kernelMode": True, "dependencies": ["plain"]})
    write_service(tmp_path, "plain", {})
    with pytest.raises(DependencyError, match="kernel-mode service 'core' depends on 'plain'"):
        order(discover([tmp_path]))


def test_entry_defaults_to_the_single_subclass(tmp_path: Path) -> None:
    write_service(tmp_path, "solo", {}, PLAIN)
    (spec,) = discover([tmp_path])
    cls = load_entry(spec)
    assert cls.__name__ == "Svc"
    assert cls.__module__ == "_kernel_services.solo.service"


def test_entry_default_ambiguous(tmp_path: Path) -> None:
    write_service(tmp_path, "two", {}, PLAIN + "class Other(BaseService):\n    pass\n")
    (spec,) = discover([tmp_path])
    with pytest.raises(ServiceLoadError, match=r"2 BaseService subclasses in service.py \(Svc, Other\)"):
        load_entry(spec)


@pytest.mark.parametrize(
    ("entry", "code", "match"),
    [
        ("nomodule:Svc", PLAIN, "entry module 'nomodule' not found"),
        ("service:Nope", PLAIN, "no 'Nope' in the module"),
        ("service:helper", PLAIN + "def helper(): pass\n", "not a subclass of kernel.BaseService"),
        ("service:Svc", "import not_a_module_anywhere\n", "No module named 'not_a_module_anywhere'"),
        ("service:Svc", "raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    ],
)
def test_entry_errors_name_service_and_file(tmp_path: Path, entry: str, code: str, match: str) -> None:
    folder = write_service(tmp_path, f"svc_{abs(hash(entry + code))}", {"name": "svc", "entry": entry}, code)
    (spec,) = discover([tmp_path])
    with pytest.raises(ServiceLoadError, match=match) as info:
        load_entry(spec)
    assert info.value.service == "svc" and str(folder) in str(info.value)


def test_no_module_at_all(tmp_path: Path) -> None:
    write_service(tmp_path, "empty", {})
    (spec,) = discover([tmp_path])
    with pytest.raises(ServiceLoadError, match=r"no 'entry' in the manifest and no service\.py"):
        load_entry(spec)


def test_a_users_folder_replaces_a_builtin_of_the_same_name(tmp_path: Path) -> None:
    builtin = write_service(tmp_path / "builtin", "em", {"name": "execution-manager"})
    mine = write_service(tmp_path / "mine", "em", {"name": "execution-manager", "custom": {"x": 1}})
    write_service(tmp_path / "mine", "other", {})
    specs = discover([tmp_path / "mine"], builtin=[builtin])
    assert [(s.name, s.folder, s.builtin) for s in specs] == [
        ("execution-manager", mine, False), ("other", tmp_path / "mine" / "other", False)]
