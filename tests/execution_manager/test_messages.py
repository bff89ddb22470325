"""Operators' messages to pinned instances (``em.send``), on real local workers, with
calls queued on the instance: the message is answered between calls, ahead of the
queued ones; an instance without a handler, a busy worker past the timeout and a bad
message each get an answer that says so."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from kernel import Kernel
from microkernel.services.execution_manager.errors import MessageError
from tests.conftest import EM_LOCAL, write_service

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SERVICES = """
import time
from kernel import BaseService, distributed

@distributed
class Listener(BaseService):
    def __init__(self):
        self.seen = []

    def work(self, i, seconds=0.2):
        time.sleep(seconds)
        self.seen.append(f"call {i}")
        return i

    def on_message(self, msg):
        self.seen.append(f"message {msg['n']}")
        return {"got": msg["n"], "seen": list(self.seen)}

    def history(self):
        return self.seen


@distributed
class Deaf(BaseService):
    def work(self):
        return 1
"""


def kernel(tmp_path: Path) -> Kernel:
    write_service(tmp_path, "listener", {"global": True, "entry": "service:Listener"}, SERVICES)
    write_service(tmp_path, "deaf", {"global": True, "entry": "service:Deaf"}, SERVICES)
    return Kernel([tmp_path], settings={"execution-manager": {**EM_LOCAL}})


async def test_a_message_reaches_a_pinned_instance_between_its_calls_ahead_of_the_queued_ones(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        em, listener, deaf = k.get_service("execution-manager"), k.get_service("listener"), k.get_service("deaf")
        wid = await em.assign_optimal_worker(listener)
        other = await em.assign_optimal_worker(deaf)
        assert other != wid  # the worker with fewest pinned instances
        calls = [listener.work(i) for i in range(5)]  # 1 s of calls queued on the instance
        await asyncio.sleep(0.3)  # the first is running
        answers = await em.send(wid, {"n": 1}, timeout=5.0)
        [reply] = answers[wid]
        assert reply["got"] == 1
        assert 1 <= len([s for s in reply["seen"] if s.startswith("call")]) < 5  # between calls, not after all
        assert await asyncio.gather(*calls) == list(range(5))
        history = await listener.history()
        assert history.index("message 1") < history.index("call 4")  # ahead of the queued ones

        everyone = await em.send(em.ALL, {"n": 2})
        assert set(everyone) == {w.id for w in await em.workers()}
        deaf_replies = [r for r in everyone[other] if isinstance(r, MessageError)]
        assert deaf_replies and "Deaf has no on_message" in str(deaf_replies[0])


async def test_a_busy_worker_times_out_and_bad_messages_are_refused(tmp_path: Path) -> None:
    async with kernel(tmp_path) as k:
        em, listener = k.get_service("execution-manager"), k.get_service("listener")
        wid = await em.assign_optimal_worker(listener)
        long = listener.work(0, 2.0)
        await asyncio.sleep(0.3)
        answers = await em.send(wid, {"n": 3}, timeout=0.3)
        assert isinstance(answers[wid], TimeoutError) and f"worker {wid} did not answer within 0.3 s" in str(answers[wid])
        assert await long == 0
        with pytest.raises(ValueError, match="a message is JSON"):
            await em.send(wid, {"n": object()})
        with pytest.raises(ValueError, match="65,536 bytes of JSON at most"):
            await em.send(wid, "x" * 70_000)
        with pytest.raises(LookupError, match="no worker 'local-9'"):
            await em.send("local-9", {"n": 4})
        assert (await em.send(wid, {"n": 5}))[wid][0]["got"] == 5  # and it answers again once free


async def test_messages_from_the_api_and_the_cli(tmp_path: Path) -> None:
    import aiohttp

    from tests.execution_manager.monitoring.test_operate import kernel_cli

    write_service(tmp_path, "listener", {"global": True, "entry": "service:Listener"}, SERVICES)
    http = {"port": 0, "adminTokenEnv": "MICROKERNEL_TEST_UNSET_TOKEN"}
    async with Kernel([tmp_path], settings={"execution-manager": {**EM_LOCAL, "http": http}}) as k, \
            aiohttp.ClientSession() as session:
        em, listener = k.get_service("execution-manager"), k.get_service("listener")
        url = em.http_address
        wid = await em.assign_optimal_worker(listener)
        cli = await asyncio.to_thread(kernel_cli, "worker", wid, "--message", '{"n": 9}', "--url", url)
        assert cli.returncode == 0, cli.stderr
        [answer] = json.loads(cli.stdout)[wid]
        assert answer["reply"]["got"] == 9
        everyone = await asyncio.to_thread(kernel_cli, "worker", "*", "--message", '{"n": 10}', "--url", url, "--json")
        assert set(json.loads(everyone.stdout)["replies"]) == {w.id for w in await em.workers()}
        bad = await asyncio.to_thread(kernel_cli, "worker", wid, "--message", "{nope", "--url", url)
        assert bad.returncode == 2 and "--message takes JSON" in bad.stderr
        async with session.post(f"{url}/api/workers/{wid}/message", json={"message": 1}) as r:
            assert r.status == 401
        token = {"Authorization": f"Bearer {(Path(os.environ['MICROKERNEL_DATA_DIR']) / 'admin.token').read_text().strip()}"}
        for body, status, said in [({"msg": 1}, 400, 'the body is {"message"'),
                                   ({"message": 1, "timeout": 0}, 400, "timeout must be a number of seconds"),
                                   ({"message": "x" * 70_000}, 413, "Request Entity Too Large")]:  # the body limit
            async with session.post(f"{url}/api/workers/{wid}/message", json=body, headers=token) as r:
                assert r.status == status and said in (await r.json())["error"], await r.text()
        async with session.post(f"{url}/api/workers/local-9/message", json={"message": 1}, headers=token) as r:
            assert r.status == 404 and "no worker 'local-9'" in (await r.json())["error"]
