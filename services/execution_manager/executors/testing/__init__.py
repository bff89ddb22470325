"""The worker conformance suite, for plugin authors: every node type must pass every
check unchanged (what makes executors interchangeable). Installed with the kernel, it
needs neither pytest nor anything private; what its calls run on a worker lives in
:mod:`.targets`, which imports only the kernel's runtime dependencies.

In a plugin's own tests (any runner; here pytest with anyio)::

    from microkernel.services.execution_manager.executors.testing import check_executor

    @pytest.mark.anyio
    async def test_my_executor_conforms():
        await check_executor(lambda worker_id: MyWorker(worker_id, {}))

or one test per check: ``@pytest.mark.parametrize("check", CHECKS)``, then
``await check(make)`` (and :data:`DEATH_CHECKS` for workers that live in another
process, :data:`PROCESS_CHECKS` when that process is on this machine). A check that
fails raises ``AssertionError`` naming what the worker did.
"""

from .checks import CHECKS, DEATH_CHECKS, PROCESS_CHECKS, Make, Recorder, call, check_executor, reply

__all__ = ["CHECKS", "DEATH_CHECKS", "PROCESS_CHECKS", "Make", "Recorder", "call", "check_executor", "reply"]
