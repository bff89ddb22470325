"""Shared fixtures: anyio on asyncio, and no process left behind by any test."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .postgres import pg_url, postgres  # noqa: F401  # fixtures: a real PostgreSQL server


@pytest.fixture
def anyio_backend() -> str:
    # The execution manager drives asyncio transports directly (see README).
    return "asyncio"


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels the tests start (in-process or not) keep their job store away from the user's."""
    monkeypatch.setenv("MICROKERNEL_DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fail a test that leaves a child process running (after a short grace)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 5.0
    left: list[psutil.Process] = []
    while time.monotonic() < deadline:
        left = [p for p in me.children(recursive=True) if p.pid not in before and _alive(p)]
        if not left:
            return
        time.sleep(0.05)
    for proc in left:
        proc.kill()
    pytest.fail(f"processes left behind: {[(p.pid, p.cmdline()) for p in left]}")


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def write_service(
    root: Path, folder: str, manifest: dict[str, Any] | str, code: str | None = None,
    module: str = "service",
) -> Path:
    """Create ``root/folder`` with a config.json and (optionally) a module."""
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (path / "config.json").write_text(text)
    if code is not None:
        (path / f"{module}.py").write_text(textwrap.dedent(code))
    return path


EM_INMEMORY = {"nodeType": "inmemory", "minWorkers": 1, "maxWorkers": 2, "inProcess": False}
EM_LOCAL = {"minWorkers": 2, "maxWorkers": 2, "inProcess": False}
EXAMPLES = Path(__file__).resolve().parent.parent / "services" / "examples"


def throwaway_tls(folder: Path) -> tuple[str, str, str]:
    """A certificate for 127.0.0.1 and localhost from a throwaway CA (trustme), written
    to ``folder``: (cert file, key file, CA file)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return str(folder / "cert.pem"), str(folder / "key.pem"), str(folder / "ca.pem")
