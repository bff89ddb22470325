"""A worker or node of the previous release is refused at the handshake, naming both
wire versions, and the kernel keeps serving the others.

The handshakes below were recorded from the release before the execution manager's
modules moved into folders (wire version 1): module paths travel inside pickles, so a
peer of that release must not get as far as unpickling anything.
"""

from __future__ import annotations

import pytest
import structlog.testing

from microkernel.services.execution_manager.wire import node as n, protocol as p
from microkernel.services.execution_manager.wire.pipe import PipeKernelSide
from tests.nodes import RawNode, running_hub, start_node, stop_node, until

# p.frame(p.Hello(1, "local-7", 4242, "3.11.2", {})), as a worker of wire version 1 sent it.
RECORDED_WORKER_HELLO = bytes.fromhex("00000016960001a76c6f63616c2d37cd1092a6332e31312e3280")
# p.encode(p.NodeHello(1, "old-node", b"\x01" * 32, {"python": "3.11.2", "version": "0.1.0", "cpus": 2})).
RECORDED_NODE_HELLO = bytes.fromhex(
    "951401a86f6c642d6e6f6465c420010101010101010101010101010101010101010101010101010101010101010183"
    "a6707974686f6ea6332e31312e32a776657273696f6ea5302e312e30a46370757302"
)


# Recorded from the release before a call carried its attempt number (wire version 2):
# p.frame(p.Hello(2, "local-8", 4343, "3.11.7", {})) and
# p.encode(p.NodeHello(2, "node-v2", b"\x02" * 32, {"python": "3.11.7", "version": "0.1.0", "cpus": 2})).
RECORDED_V2_WORKER_HELLO = bytes.fromhex("00000016960002a76c6f63616c2d38cd10f7a6332e31312e3780")
RECORDED_V2_NODE_HELLO = bytes.fromhex(
    "951402a76e6f64652d7632c420020202020202020202020202020202020202020202020202020202020202020283a6707974686f6e"
    "a6332e31312e37a776657273696f6ea5302e312e30a46370757302"
)


def test_both_wire_versions_moved_past_the_recorded_releases() -> None:
    assert p.PROTOCOL_VERSION == 3 and n.NODE_PROTOCOL_VERSION == 3


@pytest.mark.parametrize(("recorded", "version", "who"), [(RECORDED_WORKER_HELLO, 1, "local-7"),
                                                           (RECORDED_V2_WORKER_HELLO, 2, "local-8")])
def test_workers_of_earlier_releases_are_refused_naming_both_versions(recorded: bytes, version: int, who: str) -> None:
    with pytest.raises(p.ProtocolError) as refused:
        PipeKernelSide().receive_data(recorded)
    assert refused.value.code == n.CLOSE_VERSION and who in str(refused.value)
    assert f"wire version {version}" in str(refused.value) and "this kernel speaks 3" in str(refused.value)


def test_a_node_of_the_release_before_is_refused_naming_both_versions() -> None:
    kernel = n.NodeKernelSide(b"token")
    with pytest.raises(p.ProtocolError) as refused:
        kernel.receive_data(RECORDED_V2_NODE_HELLO)
    assert refused.value.code == n.CLOSE_VERSION and "'node-v2'" in refused.value.reason
    assert "wire version 2" in refused.value.reason and "this kernel speaks 3" in refused.value.reason


def test_a_worker_of_the_previous_release_is_refused_naming_both_versions() -> None:
    conn = PipeKernelSide()
    with pytest.raises(p.ProtocolError) as refused:
        conn.receive_data(RECORDED_WORKER_HELLO)
    assert refused.value.code == n.CLOSE_VERSION
    assert "wire version 1" in str(refused.value) and "this kernel speaks 3" in str(refused.value)
    assert "local-7" in str(refused.value)  # the worker it was


@pytest.mark.anyio
async def test_a_node_of_the_previous_release_is_refused_with_4003_and_the_kernel_serves_the_others() -> None:
    async with running_hub() as hub:
        proc = await start_node(hub.address, slots=1, node_id="today")
        try:
            await until(lambda: "today" in hub.sessions, what="today's node to join")
            with structlog.testing.capture_logs() as logs:
                async with RawNode.connect(hub.address) as old:
                    await old.ws.send(RECORDED_NODE_HELLO)
                    code, reason = await old.closed_with()
            assert code == n.CLOSE_VERSION
            assert "wire version 1" in reason and "this kernel speaks 3" in reason
            refusals = [e for e in logs if e.get("code") == n.CLOSE_VERSION]
            assert refusals and refusals[0]["node_id"] == "old-node", logs
            assert hub.refusals().get("version") == 1
            # The node of this release is still served.
            assert "today" in hub.sessions and hub.sessions["today"].state.value == "available"
        finally:
            assert await stop_node(proc) == 0


@pytest.mark.anyio
async def test_a_local_worker_of_the_previous_release_fails_to_start_naming_both_versions(tmp_path) -> None:
    """``executorOptions.python`` may name another environment, holding another release:
    its worker's handshake (replayed here) is refused, and the start error says why."""
    import os
    import sys

    from microkernel.plugins.local.worker import LocalWorker
    from microkernel.services.execution_manager.errors import WorkerStartError

    old = tmp_path / "python-of-the-previous-release"
    old.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                   f"os.write(int(sys.argv[-1]), bytes.fromhex({RECORDED_WORKER_HELLO.hex()!r}))\ntime.sleep(30)\n")
    os.chmod(old, 0o755)
    worker = LocalWorker("local-old", {"python": str(old), "startTimeout": 10})
    with pytest.raises(WorkerStartError) as refused:
        await worker.start()
    message = str(refused.value)
    assert "local-old" in message and "wire version 1" in message and "this kernel speaks 3" in message, message
    assert worker.is_closed
    await worker.stop()
