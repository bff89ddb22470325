"""The plugin passes the kernel's conformance kit, imported from its public place only."""

from __future__ import annotations

import pytest
from mk_subprocess_worker.worker import SubprocessWorker

from microkernel.services.execution_manager.executors.testing import (
    CHECKS,
    DEATH_CHECKS,
    PROCESS_CHECKS,
    check_executor,
)

pytestmark = pytest.mark.anyio


def make(worker_id: str) -> SubprocessWorker:
    return SubprocessWorker(worker_id, {})


async def test_the_subprocess_worker_passes_the_whole_kit() -> None:
    await check_executor(make)


@pytest.mark.parametrize("check", [*CHECKS, *DEATH_CHECKS, *PROCESS_CHECKS], ids=lambda c: c.__name__)
async def test_each_check(check) -> None:  # one test each, so a failure points at its check
    await check(make)
