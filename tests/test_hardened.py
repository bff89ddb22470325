"""Hardened surfaces: what a request can make the kernel do is bounded, and a job's code
never runs in the kernel's process."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel import Kernel

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def served(data: Path, **jobs: Any) -> AsyncIterator[tuple[Kernel, httpx.AsyncClient]]:
    """A kernel with its job API and dashboard on free ports, and an HTTP client holding
    the API's token."""
    settings = {"execution-manager": {"minWorkers": 1, "maxWorkers": 1, "http": {"port": 0}},
                "jobs": {"api": {"port": 0}, "dataDir": str(data), **jobs}}
    async with Kernel([], settings=settings) as kernel:
        token = (data / "jobs.token").read_text().strip()
        async with httpx.AsyncClient(base_url=kernel.get_service("jobs").address, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            yield kernel, http


def marker_package(root: Path, name: str) -> Path:
    """A package whose top-level code (in ``__init__`` and in a submodule's parent)
    writes the importing process's pid to a marker file."""
    marker = root / f"{name}.imported"
    package = root / name
    (package / "sub").mkdir(parents=True)
    stamp = f"import os\nwith open({str(marker)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
    (package / "__init__.py").write_text(stamp)
    (package / "sub" / "__init__.py").write_text(stamp)
    (package / "sub" / "tool.py").write_text("def double(x):\n    return 2 * x\n")
    (package / "sub" / "__main__.py").write_text("print('ran as a module')\n")
    return marker


async def test_a_job_reference_is_checked_without_running_any_of_its_code_in_the_kernel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = marker_package(tmp_path, "markpkg")
    monkeypatch.syspath_prepend(str(tmp_path))  # the kernel's path, which its workers are handed
    async with served(tmp_path / "data") as (_kernel, http):
        function = (await http.post("/jobs", json={"function": "markpkg.sub.tool:double", "args": [21]})).json()
        module = (await http.post("/jobs", json={"module": "markpkg.sub"})).json()
        missing = await http.post("/jobs", json={"function": "markpkg.nosuch:f"})
        assert missing.status_code == 400 and missing.json()["field"] == "function"
        for job in (function, module):
            done = (await http.get(f"/jobs/{job['id']}/result", params={"wait": 30})).json()
            assert done["state"] == "succeeded", done
            assert (await http.get(f"/jobs/{job['id']}")).status_code == 200
        assert (await http.get("/jobs")).status_code == 200
    pids = {int(line) for line in marker.read_text().split()}
    assert os.getpid() not in pids, "the package's code ran in the kernel's process"
    assert pids, "the job did not run the package on a worker"
    assert "markpkg" not in sys.modules
