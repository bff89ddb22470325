"""Remote nodes: real node agents (``kernel node``) dialling a real websocket hub."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from kernel import Kernel
from kernel.errors import ServiceStartError
from microkernel.plugins.websocket.listener import NodeHub
from microkernel.services.execution_manager.errors import WorkerCrashedError
from microkernel.services.execution_manager.executors.testing import CHECKS, DEATH_CHECKS
from tests import tasks
from tests.nodes import ROOT, TOKEN, running_hub, start_node, stop_node, until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def node_hub() -> AsyncIterator[NodeHub]:
    """A hub with one two-slot node attached; slots are claimed by ``slot_executor``."""
    async with running_hub() as hub:
        proc = await start_node(hub.address, slots=2)
        try:
            await until(lambda: "n1" in hub.sessions, what="the node to join")
            yield hub
        finally:
            assert await stop_node(proc) == 0


@pytest.mark.parametrize("check", CHECKS + DEATH_CHECKS, ids=lambda c: c.__name__)
async def test_conformance(node_hub: NodeHub, check) -> None:
    await check(lambda wid: node_hub.slot_executor(wid, {"startTimeout": 20}))


def nodes_kernel(**custom: object) -> Kernel:
    em = {"minWorkers": 0, "maxWorkers": 1, "inProcess": False, "nodes": {"port": 0}, **custom}
    return Kernel([], settings={"execution-manager": em})


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROKERNEL_NODE_TOKEN", TOKEN)


async def test_calls_spread_to_a_node_and_stats_list_it(token_env: None) -> None:
    async with nodes_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        proc = await start_node(em.nodes_address, slots=2, node_id="alpha", args=["--label", "gpu=1"])
        try:
            await until(lambda: len(em.pool.fleet.members) == 2, what="the node's two slots")
            stats = await em.get_stats()
            [node] = stats.nodes
            assert node.id == "alpha" and node.slots == 2 and node.state == "available"
            assert node.labels == {"gpu": 1.0} and node.heartbeat_age < 5
            assert {w.node for w in stats.worker_details} == {"alpha"}
            assert {w.node_type for w in stats.worker_details} == {"node"}
            pids = set(await asyncio.gather(*(em.submit(tasks.slow, 0.2, None) for _ in range(4))))
            worker_pids = {await em.submit(tasks.whoami) for _ in range(6)}
            assert worker_pids <= {w.pid for w in stats.worker_details} and os.getpid() not in worker_pids
            assert pids == {None}
            assert await em.submit(tasks.inc, 1, resources={"gpu": 1}) == 2
            results = [r async for r in em.map(tasks.inc, range(500))]
            assert results == list(range(1, 501))
            with pytest.raises(tasks.CustomError, match="nope"):
                await em.submit(tasks.raise_custom, "nope")
        finally:
            assert await stop_node(proc) == 0
        await until(lambda: not any(s.backend.info().node for s in em.pool.fleet.members), what="the node to leave")
        assert (await em.get_stats()).nodes == []


async def test_node_killed_mid_call_fails_its_calls_naming_the_node_or_retries_them(token_env: None) -> None:
    async with nodes_kernel() as kernel:
        em = kernel.get_service("execution-manager")
        proc = await start_node(em.nodes_address, slots=2, node_id="doomed")
        await until(lambda: len(em.pool.fleet.members) == 2, what="the node's slots")
        plain = em.submit(tasks.slow, 30, "plain")
        retried = em.submit(tasks.slow, 0.5, "retried", retries=1)
        await until(lambda: all(s.running == 1 for s in em.pool.fleet.members), what="a call on each slot")
        os.killpg(proc.pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match=r"on node doomed \(127.0.0.1:\d+\)\) was lost: node doomed") as info:
            async with asyncio.timeout(15):
                await plain
        assert info.value.worker_id.startswith("doomed:") and "slow(30, 'plain')" in str(info.value)
        async with asyncio.timeout(30):
            assert await retried == "retried"  # on a local worker started for it
        stats = await em.get_stats()
        assert stats.nodes == [] and [w.node_type for w in stats.worker_details] == ["local"]
        await proc.wait()


async def test_listening_for_nodes_needs_a_token_a_known_transport_and_a_free_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.delenv("MICROKERNEL_NODE_TOKEN", raising=False)
    with pytest.raises(ServiceStartError, match=r"no node token: set \$MICROKERNEL_NODE_TOKEN or give a token file"):
        await nodes_kernel().start()
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    token.chmod(0o644)
    with pytest.raises(ServiceStartError, match="token file: is readable by others; chmod 600 it"):
        await nodes_kernel(nodes={"port": 0, "tokenFile": str(token)}).start()
    with pytest.raises(ServiceStartError, match=r"'carrier-pigeon' is not a known node transport \(known: dask, websocket\)"):
        await nodes_kernel(nodes={"transport": "carrier-pigeon"}).start()
    token.chmod(0o600)
    async with nodes_kernel(nodes={"port": 0, "tokenFile": str(token)}) as kernel:
        taken = kernel.get_service("execution-manager").nodes_address.rsplit(":", 1)[1]
        with pytest.raises(ServiceStartError, match=rf"cannot listen for nodes on 127.0.0.1:{taken}: .*in use; "
                                                    r"change custom.nodes.port"):
            await nodes_kernel(nodes={"port": int(taken), "tokenFile": str(token)}).start()


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"),
    [
        (["--connect", "ws://127.0.0.1:1"], {}, 1, "no node token: set $MICROKERNEL_NODE_TOKEN"),
        (["--connect", "ws://127.0.0.1:1", "--token", "abc"], {}, 2, "never taken on the command line"),
        (["--connect", "http://h:1"], {"MICROKERNEL_NODE_TOKEN": "t"}, 2, "a scheme among ['ws', 'wss']"),
        (["--connect", "ws://u:secret@h:1"], {"MICROKERNEL_NODE_TOKEN": "t"}, 2, "a token never goes in a URL"),
        (["--connect", "ws://h:1", "--slots", "0"], {"MICROKERNEL_NODE_TOKEN": "t"}, 2, "'--slots': 0 is not in the range x>=1"),
        (["--connect", "ws://h:1", "--label", "gpu=lots"], {"MICROKERNEL_NODE_TOKEN": "t"}, 2, "NAME=AMOUNT"),
    ],
)
def test_kernel_node_refuses_bad_arguments_clearly(argv: list[str], env: dict[str, str], code: int, message: str) -> None:
    base = {k: v for k, v in os.environ.items() if k != "MICROKERNEL_NODE_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "kernel", "node", *argv], env={**base, **env},
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == code
    assert message in proc.stderr and "secret" not in proc.stderr and "Traceback" not in proc.stderr


def test_kernel_run_and_kernel_node_from_the_command_line(tmp_path) -> None:
    env = {**os.environ, "MICROKERNEL_NODE_TOKEN": TOKEN}
    kernel_cmd = [sys.executable, "-m", "kernel", "--log-json", "run", str(tmp_path),
                  "--set", 'execution-manager.nodes={"port": 0}', "--set", "execution-manager.minWorkers=0",
                  "--no-http"]
    with subprocess.Popen(kernel_cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                          cwd=ROOT) as kernel:
        try:
            assert kernel.stderr is not None
            lines = []
            for line in kernel.stderr:
                lines.append(line)
                if line.startswith("nodes connect with: kernel node --connect ws://127.0.0.1:"):
                    break
            else:
                raise AssertionError("".join(lines))
            url = line.split("--connect ")[1].strip()
            node_cmd = [sys.executable, "-m", "kernel", "node", "--connect", url, "--slots", "1",
                        "--node-id", "cli-node"]
            with subprocess.Popen(node_cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True) as node:
                for line in kernel.stderr:
                    if '"worker joined"' in line and '"cli-node:1"' in line:
                        break
                node.send_signal(signal.SIGTERM)
                _, err = node.communicate(timeout=20)
            assert node.returncode == 0 and "the kernel said goodbye" in err
            kernel.send_signal(signal.SIGTERM)
            assert kernel.wait(timeout=20) == 0
        finally:
            kernel.kill()


async def test_restarting_a_node_slot_by_id_drains_it_and_its_node_starts_another(token_env: None) -> None:
    async with nodes_kernel(maxWorkers=0) as kernel:
        em = kernel.get_service("execution-manager")
        proc = await start_node(em.nodes_address, slots=1, node_id="beta")
        try:
            await until(lambda: len(em.pool.fleet.members) == 1, what="the node's slot")
            [old] = await em.workers()
            running = em.submit(tasks.stamp, "held", 1.0)
            await until(lambda: bool(em.pool.fleet.members[0].running), what="the call to start")
            await em.restart_worker(old.id)  # drained: the call it runs finishes
            assert (await running)[0] == "held"
            await until(lambda: any(w.id != old.id and w.backend.is_available for w in em.pool.fleet.members),
                        what="the node's new slot")
            [new] = await em.workers()
            assert new.node == "beta" and new.pid != old.pid
            assert await em.submit(tasks.inc, 1) == 2
        finally:
            assert await stop_node(proc) == 0


async def test_a_message_reaches_an_instance_pinned_on_a_node_slot(token_env: None, tmp_path) -> None:
    from tests.conftest import write_service
    from tests.execution_manager.test_messages import SERVICES

    write_service(tmp_path, "listener", {"global": True, "entry": "service:Listener"}, SERVICES)
    em_settings = {"minWorkers": 0, "maxWorkers": 0, "inProcess": False, "nodes": {"port": 0}}
    async with Kernel([tmp_path], settings={"execution-manager": em_settings}) as kernel:
        em, listener = kernel.get_service("execution-manager"), kernel.get_service("listener")
        proc = await start_node(em.nodes_address, slots=1, node_id="gamma")
        try:
            await until(lambda: len(em.pool.fleet.members) == 1, what="the node's slot")
            wid = await em.assign_optimal_worker(listener)
            queued = [listener.work(i, 0.1) for i in range(3)]
            answers = await em.send(wid, {"n": 7}, timeout=10)
            assert answers[wid][0]["got"] == 7
            assert await asyncio.gather(*queued) == [0, 1, 2]
            assert "message 7" in await listener.history()
        finally:
            assert await stop_node(proc) == 0
