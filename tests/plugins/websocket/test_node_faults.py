"""Remote nodes under faults: frozen, partitioned, drained, and the kernel restarting."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import WorkerCrashedError
from tests import tasks
from tests.conftest import write_service
from tests.execution_manager.test_distributed import COUNTER
from tests.nodes import TOKEN, start_node, stop_node, until

pytestmark = pytest.mark.anyio
FAST_BEATS = {"heartbeatInterval": 0.2, "heartbeatTimeout": 0.8, "failAfter": 2.0}


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROKERNEL_NODE_TOKEN", TOKEN)


def kernel_for_nodes(paths: list[Path] | None = None, **nodes: object) -> Kernel:
    em = {"minWorkers": 0, "maxWorkers": 1, "inProcess": False, "nodes": {"port": 0, **FAST_BEATS, **nodes}}
    return Kernel(paths or [], settings={"execution-manager": em})


def node_slots(em) -> list:
    return [s for s in em.pool.fleet.members if s.backend.info().node is not None]


async def test_a_frozen_node_turns_unhealthy_then_failed_and_rejoins_as_a_new_registration() -> None:
    async with kernel_for_nodes() as kernel:
        em = kernel.get_service("execution-manager")
        proc = await start_node(em.nodes_address, slots=1, node_id="frozen", args=["--label", "remote=1"])
        try:
            await until(lambda: len(node_slots(em)) == 1, what="the node's slot")
            first = node_slots(em)[0].id
            assert await em.submit(tasks.inc, 1) == 2  # only the node is there: it ran the call
            os.killpg(proc.pid, signal.SIGSTOP)  # heartbeats stop; the socket stays open
            held = em.submit(tasks.slow, 0.1, "held", retries=1)
            await until(lambda: [n.state for n in em.listener.nodes()] == ["unhealthy"], what="unhealthy")
            assert node_slots(em)[0].backend.state.value == "unhealthy"
            # No new call goes to an unhealthy node: a local worker is started for it.
            assert await asyncio.wait_for(em.submit(tasks.whoami), 20) != proc.pid
            async with asyncio.timeout(20):
                assert await held == "held"  # given up on the node when it failed, retried locally
            stats = await em.get_stats()
            assert stats.nodes == [] and stats.node_refusals.get("heartbeat") == 1
            os.killpg(proc.pid, signal.SIGCONT)  # it wakes, finds itself dropped, and reconnects
            await until(lambda: len(node_slots(em)) == 1, timeout=30, what="the node to rejoin")
            assert node_slots(em)[0].id != first
            assert await em.submit(tasks.inc, 5, resources={"remote": 1}) == 6
        finally:
            assert await stop_node(proc) == 0


class Proxy:
    """A TCP proxy under the test's control: ``pause()`` stops forwarding without
    closing anything, like a network that silently drops packets."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        self.flowing.set()
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_stopped_worker_on_a_node_fails_its_call_in_time_and_the_node_replaces_it() -> None:
    # Liveness is judged on the node, from outside the worker process, as the kernel's
    # monitor judges local workers: the node itself stays up and keeps beating.
    settings = {"minWorkers": 0, "maxWorkers": 0, "inProcess": False, "nodes": {"port": 0, **FAST_BEATS}}
    async with Kernel([], settings={"execution-manager": settings}) as kernel:
        em = kernel.get_service("execution-manager")
        proc = await start_node(em.nodes_address, slots=1, node_id="far", args=["--worker-timeout", "1"])
        try:
            await until(lambda: len(node_slots(em)) == 1, what="the node's slot")
            pid = await em.submit(tasks.whoami)
            call = em.submit(tasks.slow, 30, "never")
            await until(lambda: node_slots(em)[0].running == 1, what="the call on the node")
            await asyncio.sleep(0.3)  # begun (one never begun would run elsewhere, free)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            with pytest.raises(WorkerCrashedError, match=r"declared dead: stopped \(SIGSTOP\)") as info:
                async with asyncio.timeout(15):
                    await call
            assert "while running" in str(info.value) and "[task " in str(info.value), str(info.value)
            assert time.monotonic() - t0 < 1 + 1 + 1.5  # the timeout + 1 s; slack for a loaded machine
            await until(lambda: len(node_slots(em)) == 1, timeout=20, what="the node's new slot")
            assert await em.submit(tasks.whoami) != pid
        finally:
            assert await stop_node(proc) == 0


async def test_a_link_that_stops_forwarding_is_detected_and_the_call_fails_naming_the_node() -> None:
    async with kernel_for_nodes() as kernel:
        em = kernel.get_service("execution-manager")
        proxy = Proxy(int(em.nodes_address.rsplit(":", 1)[1]))
        await proxy.start()
        proc = await start_node(f"ws://127.0.0.1:{proxy.port}", slots=1, node_id="far")
        try:
            await until(lambda: len(node_slots(em)) == 1, what="the node's slot")
            running = em.submit(tasks.slow, 3, "never seen")
            await until(lambda: node_slots(em)[0].running == 1, what="the call on the node")
            proxy.flowing.clear()
            with pytest.raises(WorkerCrashedError, match=r"worker far:1 .* on node far .* was lost: node far failed: "
                                                         r"sent nothing for"):
                async with asyncio.timeout(15):
                    await running
            assert node_slots(em) == []
            proxy.flowing.set()  # the link heals: the node learns it was dropped and rejoins
            await until(lambda: len(node_slots(em)) == 1, timeout=40, what="the node to rejoin")
        finally:
            assert await stop_node(proc) == 0
            await proxy.close()


async def test_sigterm_drains_a_node_its_call_finishes_and_its_pinned_instance_comes_home(tmp_path: Path) -> None:
    write_service(tmp_path, "counter", {"global": True}, COUNTER)
    async with kernel_for_nodes([tmp_path]) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        proc = await start_node(em.nodes_address, slots=2, node_id="leaving")
        await until(lambda: len(node_slots(em)) == 2, what="the node's slots")
        wid = await em.assign_optimal_worker(svc)
        assert wid.startswith("leaving:")
        assert [await svc.incr(2) for _ in range(3)] == [2, 4, 6]  # state lives on the node
        node_pid = await svc.pid()
        assert node_pid != os.getpid()
        running = em.submit(tasks.slow, 1.0, "finished")
        await until(lambda: sum(s.running for s in node_slots(em)) >= 1, what="the call on the node")
        proc.terminate()
        async with asyncio.timeout(20):
            assert await running == "finished"  # drained: the running call was let finish
            assert await proc.wait() == 0
        assert node_slots(em) == []
        # No other worker to move to: the instance came home, state and all.
        assert em.worker_of(svc) is None and svc.n == 6 and svc.log == [2, 2, 2]
        assert await svc.incr(1) == 7 and await svc.pid() != node_pid


async def test_an_instance_pinned_on_a_node_brings_its_state_back_on_release(tmp_path: Path) -> None:
    write_service(tmp_path, "counter", {"global": True}, COUNTER)
    async with kernel_for_nodes([tmp_path]) as kernel:
        em = kernel.get_service("execution-manager")
        svc = kernel.get_service("counter")
        svc.n = 10
        proc = await start_node(em.nodes_address, slots=1, node_id="keeper")
        try:
            await until(lambda: len(node_slots(em)) == 1, what="the node's slot")
            assert (await em.assign_optimal_worker(svc)) == "keeper:1"  # state went to the node
            assert await asyncio.gather(*(svc.incr(1) for _ in range(20))) == list(range(11, 31))
            assert svc.n == 10  # the kernel's copy is stale while pinned
            await em.release_worker(svc)
            assert svc.n == 30 and len(svc.log) == 20 and em.worker_of(svc) is None
        finally:
            assert await stop_node(proc) == 0


async def test_a_node_reconnects_with_backoff_when_the_kernel_restarts() -> None:
    async with kernel_for_nodes() as kernel:
        em = kernel.get_service("execution-manager")
        port = int(em.nodes_address.rsplit(":", 1)[1])
        proc = await start_node(em.nodes_address, slots=1, node_id="loyal")
        await until(lambda: len(node_slots(em)) == 1, what="the node's slot")
    try:
        await asyncio.sleep(0.5)  # the kernel is gone; the node keeps trying
        assert proc.returncode is None
        async with kernel_for_nodes(port=port) as kernel:
            em = kernel.get_service("execution-manager")
            await until(lambda: len(node_slots(em)) == 1, timeout=30, what="the node to come back")
            assert await em.submit(tasks.inc, 41) == 42
    finally:
        assert await stop_node(proc) == 0
