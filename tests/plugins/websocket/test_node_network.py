"""Nodes over real networks: TLS with a throw-away CA, and a node in its own network
namespace reaching the kernel over a veth link that the test cuts mid-call."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import WorkerCrashedError
from tests import tasks
from tests.conftest import throwaway_tls
from tests.nodes import TOKEN, start_node, stop_node, until

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROKERNEL_NODE_TOKEN", TOKEN)


def kernel_for_nodes(**nodes: object) -> Kernel:
    em = {"minWorkers": 0, "maxWorkers": 1, "inProcess": False, "nodes": {"port": 0, **nodes}}
    return Kernel([], settings={"execution-manager": em})


def node_slots(em) -> list:
    return [s for s in em.pool.fleet.members if s.backend.info().node is not None]


async def test_wss_with_a_certificate_from_a_throwaway_ca(tmp_path: Path) -> None:
    cert, key, _ = throwaway_tls(tmp_path)
    async with kernel_for_nodes(certFile=cert, keyFile=key) as kernel:
        em = kernel.get_service("execution-manager")
        assert em.nodes_address.startswith("wss://127.0.0.1:")
        untrusting = await start_node(em.nodes_address, node_id="untrusting")  # no --ca-file: system CAs
        trusting = await start_node(em.nodes_address, node_id="trusting", args=["--ca-file", str(tmp_path / "ca.pem")])
        try:
            await until(lambda: len(node_slots(em)) == 1, what="the trusting node")
            assert await em.submit(tasks.inc, 1) == 2
            await asyncio.sleep(1.0)
            assert [s.backend.info().node for s in node_slots(em)] == ["trusting"]
            assert untrusting.returncode is None  # it keeps retrying, it does not crash
        finally:
            assert await stop_node(trusting) == 0
            assert await stop_node(untrusting) == 0


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (namespace, our
    interface, our address); the node's end is .2 of a /30."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2's ip to make a network namespace")
    tag = os.getpid() % 10000
    ns, ours, theirs = f"mk-test-{tag}", f"mkh{tag}", f"mkn{tag}"
    net = f"10.231.{tag % 250}"
    try:
        _run("ip", "netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot make a network namespace here: {getattr(exc, 'stderr', b'').decode().strip() or exc}")
    try:
        _run("ip", "link", "add", ours, "type", "veth", "peer", "name", theirs)
        _run("ip", "link", "set", theirs, "netns", ns)
        _run("ip", "addr", "add", f"{net}.1/30", "dev", ours)
        _run("ip", "link", "set", ours, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", theirs)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", theirs, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, ours, f"{net}.1"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", ours], capture_output=True, timeout=10)


async def test_a_node_in_another_network_namespace_and_a_cut_link(netns: tuple[str, str, str]) -> None:
    ns, link, address = netns
    beats = {"heartbeatInterval": 0.2, "heartbeatTimeout": 0.8, "failAfter": 2.0}
    async with kernel_for_nodes(host=address, **beats) as kernel:
        em = kernel.get_service("execution-manager")
        assert em.nodes_address.startswith(f"ws://{address}:")
        proc = await start_node(em.nodes_address, slots=1, node_id="netns-node", netns=ns)
        try:
            await until(lambda: len(node_slots(em)) == 1, what="the node across the veth link")
            [node] = (await em.get_stats()).nodes
            assert node.address.startswith(address.rsplit(".", 1)[0] + ".2:")  # not loopback
            assert await em.submit(tasks.inc, 1) == 2
            running = em.submit(tasks.slow, 10, "cut off")
            await until(lambda: node_slots(em)[0].running == 1, what="the call on the node")
            _run("ip", "link", "set", link, "down")
            with pytest.raises(WorkerCrashedError, match=r"on node netns-node .* failed: sent nothing for"):
                async with asyncio.timeout(15):
                    await running
            assert node_slots(em) == []
            _run("ip", "link", "set", link, "up")
            await until(lambda: len(node_slots(em)) == 1, timeout=45, what="the node to rejoin after the cut")
            assert await em.submit(tasks.inc, 2) == 3
        finally:
            assert await stop_node(proc) == 0
