from __future__ import annotations

from pathlib import Path

import pytest

from kernel.errors import ManifestError
from kernel.manifest import read_manifest
from tests.conftest import write_service


def test_defaults_name_from_folder(tmp_path: Path) -> None:
    folder = write_service(tmp_path, "my_service", {})
    spec = read_manifest(folder)
    assert spec.name == "my_service"
    m = spec.manifest
    assert (m.entry, m.global_, m.kernel_mode, m.fail_on_error, m.dependencies) == (None, False, False, True, [])


def test_all_fields(tmp_path: Path) -> None:
    folder = write_service(tmp_path, "x", {
        "name": "svc", "entry": "service:Svc", "global": True, "kernelMode": True,
        "failOnError": False, "dependencies": ["a"], "custom": {"k": 1},
    })
    m = read_manifest(folder).manifest
    assert (m.name, m.entry, m.global_, m.kernel_mode, m.fail_on_error) == ("svc", "service:Svc", True, True, False)
    assert m.dependencies == ["a"] and m.custom == {"k": 1}


def test_every_problem_reported_at_once_naming_file_and_fields(tmp_path: Path) -> None:
    folder = write_service(tmp_path, "bad", {
        "kernelMode": "yes", "dependencies": "a", "colour": "red", "entry": "no-colon",
    })
    with pytest.raises(ManifestError) as info:
        read_manifest(folder)
    err = info.value
    text = str(err)
    assert str(folder / "config.json") in text
    fields = {f for f, _ in err.problems}
    assert {"kernelMode", "dependencies", "colour", "entry"} <= fields
    assert "unknown field" in text and "allowed fields" in text
    assert "'yes'" in text


def test_a_renamed_field_names_its_new_name(tmp_path: Path) -> None:
    folder = write_service(tmp_path, "old", {"runLocally": True})
    with pytest.raises(ManifestError, match="'runLocally' was renamed 'inProcess'") as info:
        read_manifest(folder)
    assert str(folder / "config.json") in str(info.value)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    folder = write_service(tmp_path, "bad", '{\n  "name": "x",\n  oops\n}')
    with pytest.raises(ManifestError, match=r"config.json: invalid JSON at line 3"):
        read_manifest(folder)


def test_not_an_object(tmp_path: Path) -> None:
    folder = write_service(tmp_path, "bad", "[1, 2]")
    with pytest.raises(ManifestError, match="expected a JSON object, got list"):
        read_manifest(folder)


def test_bad_name_and_duplicate_dependency(tmp_path: Path) -> None:
    folder = write_service(tmp_path, "bad", {"name": "has space", "dependencies": ["a", "a"]})
    with pytest.raises(ManifestError) as info:
        read_manifest(folder)
    assert {f for f, _ in info.value.problems} == {"name", "dependencies"}
    assert "listed more than once: a" in str(info.value)


def test_priority_must_be_0_to_10(tmp_path: Path) -> None:
    folder = write_service(tmp_path, "p", {"priority": 11})
    with pytest.raises(ManifestError, match="priority: Input should be less than or equal to 10"):
        read_manifest(folder)
