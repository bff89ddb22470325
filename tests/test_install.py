"""The built wheel, installed (not editable) into a fresh virtual environment, next to
an application with its own ``services`` and ``plugins`` packages: nothing collides.

Slow (a wheel build and an install from the package index), so it runs once, and its
commands share one environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from .conftest import write_service

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_TOP_LEVEL = {"services", "plugins", "tests", "examples", "benchmarks"}

APP_SCRIPT = """
import asyncio

import plugins  # the application's own packages, not the kernel's
import services
from kernel import Kernel


async def main() -> None:
    assert plugins.MINE and services.MINE
    async with Kernel.from_paths(["services"]) as kernel:
        em = kernel.get_service("execution-manager")
        greeter = kernel.get_service("greeter")
        print("greet:", await greeter.greet("ada"))
        await em.assign_optimal_worker(greeter)
        await greeter.greet("bob")
        await em.release_worker(greeter)
        print("greeted:", greeter.greeted)
        print("pow:", await em.submit(pow, 2, 100))
        print("map:", [y async for y in em.map(str.upper, ["a", "b"])])
        stats = await em.get_stats()
        print("workers:", stats.workers)


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project's wheel; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("install")
    dist = tmp / "dist"
    # Built from a clean copy: setuptools builds in the source tree, and its build/ folder
    # keeps modules since deleted, which would slip into the wheel (and litter the checkout).
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
        ".pytest_cache"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=240,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist() if ".dist-info" not in name.split("/")[0]}
    assert top == {"kernel", "microkernel"}, top
    assert not top & FORBIDDEN_TOP_LEVEL
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n.rsplit("/", 1)[1] for n in zf.namelist() if n.startswith("microkernel/services/execution_manager/")
                   and n.count("/") == 3 and n.endswith(".py")}
    assert shipped == {p.name for p in (ROOT / "services" / "execution_manager").glob("*.py")}
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                         capture_output=True, text=True, timeout=400)
    assert pip.returncode == 0, pip.stderr
    return venv / "bin"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """An application folder with its own ``services`` and ``plugins`` packages."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "__init__.py").write_text("MINE = True\n")
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "__init__.py").write_text("MINE = True\n")
    write_service(tmp_path / "services", "greeter", {"name": "greeter", "global": True}, """
        from kernel import BaseService, distributed

        @distributed
        class Greeter(BaseService):
            def __init__(self) -> None:
                self.greeted = 0

            def greet(self, who: str) -> str:
                self.greeted += 1
                return f"hello {who}"
    """)
    (tmp_path / "services" / "greeter" / "__init__.py").write_text("")
    (tmp_path / "app.py").write_text(textwrap.dedent(APP_SCRIPT))
    return tmp_path


def _env() -> dict[str, str]:
    # Nothing of the repository or of the test run's own environment leaks in.
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"KERNEL_LOG_LEVEL": "warning"}


@pytest.mark.timeout(600)
def test_wheel_installs_beside_an_applications_own_packages(installed: Path, app: Path) -> None:
    demo = subprocess.run([str(installed / "kernel"), "demo", "--limit", "200000", "--workers", "2"],
                          cwd=app, capture_output=True, text=True, timeout=120, env=_env())
    assert demo.returncode == 0, demo.stderr
    assert "17984" in demo.stdout.replace(",", "")  # primes below 200,000

    script = subprocess.run([str(installed / "python"), "app.py"], cwd=app, capture_output=True, text=True,
                            timeout=120, env=_env())
    assert script.returncode == 0, script.stderr
    assert "greet: hello ada" in script.stdout
    assert "greeted: 1" in script.stdout  # the pinned call's state came back
    assert f"pow: {2**100}" in script.stdout
    assert "map: ['A', 'B']" in script.stdout

    cmd = [str(installed / "kernel"), "run", "services", "--no-http"]
    with subprocess.Popen(cmd, cwd=app, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=_env()) as proc:
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
            assert first.startswith("kernel running:"), first + proc.stderr.read()
            assert "execution-manager (running)" in first and "greeter (running)" in first
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
