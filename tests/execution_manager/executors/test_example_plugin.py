"""The example executor plugin kept outside the built-ins (``examples/subprocess-worker``):
found through the ``microkernel.plugins`` entry point of a distribution on ``sys.path``,
it runs a kernel's calls in its child processes, imports only the seam's faces, and
passes the kit from its own test file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "subprocess-worker"
PACKAGE = "mk_subprocess_worker"
FACES = ("executors", "executors.testing", "wire", "errors", "hookspecs")


@pytest.fixture
def distribution(tmp_path: Path) -> Path:
    """The example as an installed distribution would lie on ``sys.path``: its package
    and a ``.dist-info`` with its entry points, in a temporary folder."""
    site = tmp_path / "site"
    shutil.copytree(EXAMPLE / PACKAGE, site / PACKAGE)
    info = site / "mk_subprocess_worker-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mk-subprocess-worker\nVersion: 0.1.0\n")
    entry = re.search(r'\[project.entry-points."microkernel.plugins"\]\n(.+?)\n', (EXAMPLE / "pyproject.toml").read_text())
    assert entry, "the example's pyproject.toml declares no microkernel.plugins entry point"
    name, _, value = entry.group(1).partition("=")
    (info / "entry_points.txt").write_text(f"[microkernel.plugins]\n{name.strip()} = {value.strip().strip(chr(34))}\n")
    return site


def env_with(path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}


def test_the_kernel_finds_the_plugin_by_its_entry_point_and_runs_calls_on_it(distribution: Path, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import asyncio, os
        from kernel import Kernel

        async def main():
            settings = {"execution-manager": {"nodeType": "subprocess", "minWorkers": 2, "maxWorkers": 2}}
            async with Kernel([], settings=settings) as kernel:
                em = kernel.get_service("execution-manager")
                pids = set(await asyncio.gather(*(em.submit(os.getpid) for _ in range(8))))
                stats = await em.get_stats()
                print("types:", sorted({w.node_type for w in stats.worker_details}))
                print("elsewhere:", os.getpid() not in pids, len(pids) >= 1)

        asyncio.run(main())
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env=env_with(distribution), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "types: ['subprocess']" in out.stdout and "elsewhere: True True" in out.stdout, out.stdout


def test_the_plugin_passes_the_kit_from_its_own_test_file(distribution: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "anyio", "--timeout", "60",
         "-c", os.devnull, "--rootdir", str(EXAMPLE), str(EXAMPLE / "tests")],
        capture_output=True, text=True, timeout=300, env=env_with(distribution), cwd=EXAMPLE,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", out.stdout) and "failed" not in out.stdout, out.stdout


def test_the_plugin_imports_only_the_seams_faces() -> None:
    imported = []
    for source in sorted((EXAMPLE / PACKAGE).glob("*.py")) + sorted((EXAMPLE / "tests").glob("*.py")):
        for module in re.findall(r"^\s*from (microkernel\.[\w.]+) import", source.read_text(), re.M):
            imported.append((source.name, module))
    assert imported, "the example imports nothing of the execution manager"
    em = "microkernel.services.execution_manager."
    wrong = [(name, module) for name, module in imported
             if not module.startswith(em) or (module.removeprefix(em).split(".wire.")[0] not in FACES
             and not module.startswith(em + "wire."))]
    assert not wrong, f"the example imports past the faces: {wrong}"
