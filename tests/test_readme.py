"""README.md as a newcomer reads it: every Python block runs as written, each in a fresh
process, in an app folder laid out as the README says (``services/prime_counter/`` made
of its own manifest and service blocks). A block that talks to a running kernel's job
API gets one, started with ``kernel run services/`` as the README shows."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
KERNEL = str(Path(sys.executable).with_name("kernel"))
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def python_blocks() -> list[tuple[str, str]]:
    """(an id naming the block by its first line, its source)."""
    return [(f"{i}: {body.splitlines()[0][:50]}", body) for i, body in enumerate(blocks("python"))]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The README's app: services/prime_counter from its manifest and service blocks."""
    folder = tmp_path / "services" / "prime_counter"
    folder.mkdir(parents=True)
    manifest = next(b for b in blocks("json") if '"name": "prime-counter"' in b)
    service = next(b for b in blocks("python") if b.startswith("# services/prime_counter/service.py"))
    (folder / "config.json").write_text(manifest)
    (folder / "service.py").write_text(service)
    return tmp_path


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("source", [s for _, s in python_blocks()], ids=[i for i, _ in python_blocks()])
def test_every_python_block_of_the_readme_runs_as_written(app: Path, source: str) -> None:
    (app / "block.py").write_text(source)
    kernel = None
    if "Client(" in source:  # the job API of a kernel the reader started (`kernel run services/`)
        kernel = subprocess.Popen([KERNEL, "run", "services", "--set", "execution-manager.http=null"], cwd=app,
                                  env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert kernel.stderr is not None
        said = []
        for line in kernel.stderr:
            said.append(line)
            if line.startswith("kernel running:"):
                break
        else:
            pytest.fail("the kernel did not start:\n" + "".join(said))
    try:
        out = subprocess.run([sys.executable, "block.py"], cwd=app, env=env(), capture_output=True, text=True,
                             timeout=150)
    finally:
        if kernel is not None:
            kernel.send_signal(signal.SIGTERM)
            kernel.communicate(timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_the_readme_shows_every_verb_it_names() -> None:
    text = README.read_text()
    for verb in ("kernel run", "kernel status", "kernel node", "kernel submit", "kernel jobs", "kernel job ",
                 "kernel logs", "kernel cancel", "kernel demo", "kernel completion", "kernel --version"):
        assert verb in text, verb
