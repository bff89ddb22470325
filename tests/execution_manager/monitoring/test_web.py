"""The kernel's HTTP face on a real kernel with real workers: JSON API, /metrics,
/healthz, control with and without the admin token, the live feed, bad input."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kernel import Kernel
from kernel.errors import ConfigError, SettingsError
from tests import tasks
from tests.conftest import EM_LOCAL

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]
TOKEN = "web-test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def kernel_with_http(tmp_path: Path, token: str | None = TOKEN, **custom: Any) -> Kernel:
    http: dict[str, Any] = {"port": 0, "pushInterval": 0.2}
    if token is not None:
        (tmp_path / "admin-token").write_text(token)
        (tmp_path / "admin-token").chmod(0o600)
        http["adminTokenFile"] = str(tmp_path / "admin-token")
    else:
        http["adminTokenEnv"] = "MICROKERNEL_TEST_UNSET_TOKEN"
    return Kernel([], settings={"execution-manager": {**EM_LOCAL, "http": http, **custom}})


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Any, aiohttp.ClientSession, str]]:
    async with kernel_with_http(tmp_path) as kernel, aiohttp.ClientSession() as http:
        em = kernel.get_service("execution-manager")
        yield em, http, em.http_address


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def until(check: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_status_shows_workers_their_calls_and_progress(running: Any) -> None:
    em, http, url = running
    assert url.startswith("http://127.0.0.1:")
    handle = em.submit(tasks.report_then_wait, 0.5, 1.5, timeout=30)

    async def busy() -> Any:
        workers = await get(http, f"{url}/api/workers")
        return next((w for w in workers if w["calls"] and w["calls"][0]["progress"] == 0.5), None)

    worker = await until(busy)
    call = worker["calls"][0]
    assert call["call"] == "report_then_wait" and call["timeout"] == 30 and call["message"] == "halfway there"
    assert 0 < call["elapsed"] < 30 and worker["node_type"] == "local" and worker["pid"] > 0
    assert worker["memory_rss"] > 0 or worker["cpu_percent"] >= 0
    assert await handle == 0.5
    status = await get(http, f"{url}/api/status")
    assert status["pool"]["min_workers"] == 2 and status["pool"]["max_workers"] == 2
    assert status["pool"]["done"] >= 1 and {w["id"] for w in status["workers"]} == {"local-1", "local-2"}
    assert {s["name"]: s["state"] for s in status["services"]} == {"execution-manager": "running", "jobs": "running"}
    async with http.get(f"{url}/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    async with http.get(f"{url}/") as r:
        page = await r.text()
        assert r.status == 200 and "Workers and nodes" in page and "/api/live" in page


async def test_failures_keep_their_traceback_and_metrics_count_calls(running: Any) -> None:
    em, http, url = running
    for i in range(5):
        assert await em.submit(tasks.inc, i) == i + 1
    with pytest.raises(tasks.CustomError):
        await em.submit(tasks.raise_custom, "the row was bad")
    failures = await until(lambda: get(http, f"{url}/api/failures"))
    assert failures[0]["call"] == "raise_custom" and "CustomError: the row was bad" in failures[0]["error"]
    assert isinstance(failures[0]["task_id"], int)  # the call's one id, as in its log lines and errors
    assert "raise_custom" in failures[0]["traceback"] and failures[0]["worker_id"].startswith("local-")
    async with http.get(f"{url}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples['microkernel_calls_total{outcome="done"}']) == 5
    assert float(samples['microkernel_calls_total{outcome="failed"}']) == 1
    assert float(samples["microkernel_attempts_failed_total"]) == 1  # not retried: one attempt, one call
    assert float(samples["microkernel_retries_total"]) == 0
    assert float(samples["microkernel_call_duration_seconds_count"]) == 6
    assert float(samples["microkernel_queue_wait_seconds_count"]) == 6
    assert float(samples['microkernel_workers{kind="local",state="available"}']) == 2
    assert float(samples['microkernel_worker_starts_total{kind="local"}']) == 2
    assert "# TYPE microkernel_call_duration_seconds histogram" in text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f.type for f in text_string_to_metric_families(text)}  # parses as Prometheus would
    assert families["microkernel_calls"] == "counter" and families["microkernel_queue_depth"] == "gauge"
    assert families["microkernel_queue_wait_seconds"] == "histogram"
    assert all(name.startswith("microkernel_") for name in families)
    assert "task_id" not in text and "call_id" not in text


async def test_control_needs_the_admin_token_and_changes_nothing_without_it(running: Any) -> None:
    em, http, url = running
    drain = f"{url}/api/workers/local-1/drain"
    async with http.post(drain) as r:
        assert r.status == 401 and "admin token" in (await r.json())["error"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.post(drain, headers={"Authorization": "Bearer not-it"}) as r:
        assert r.status == 403 and (await r.json())["error"] == "wrong admin token"
    async with http.post(f"{url}/api/scale", json={"maxWorkers": 5}, headers={"Authorization": "Basic x"}) as r:
        assert r.status == 401
    assert em.pool.settings.max_workers == 2 and not em.pool.fleet.workers["local-1"].retiring
    assert em.web.refusals == {"no-token": 2, "wrong-token": 1}
    async with http.post(drain, headers=ADMIN) as r:
        assert r.status == 202 and await r.json() == {"worker": "local-1", "action": "drain"}

    async def gone() -> bool:
        return "local-1" not in {w["id"] for w in await get(http, f"{url}/api/workers")}

    await until(gone)
    exited = await get(http, f"{url}/api/exited")
    assert exited[0]["worker_id"] == "local-1" and "drained on request" in exited[0]["reason"]


async def test_control_bad_input_gets_a_4xx_naming_what_is_wrong(running: Any) -> None:
    em, http, url = running
    cases = [
        ("POST", "/api/workers/local-9/drain", None, 404, "no worker 'local-9' (workers: local-1, local-2)"),
        ("POST", "/api/workers/nope/stop", None, 404, "no worker 'nope'"),
        ("POST", "/api/scale", b'{"maxWorkers": 3', 400, "the body is not JSON"),
        ("POST", "/api/scale", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/api/scale", b'{"maxworkers": 3}', 400, "unknown field 'maxworkers' (expected minWorkers, maxWorkers)"),
        ("POST", "/api/scale", b'{"maxWorkers": "3"}', 400, "field 'maxWorkers' must be an integer"),
        ("POST", "/api/scale", b'{"minWorkers": 3}', 400, "minWorkers (3) is above maxWorkers (2)"),
        ("POST", "/api/scale", b"{}", 400, "give minWorkers, maxWorkers or both"),
        ("PUT", "/api/projects/etl/limit", b'{"limit": 0}', 400, "the limit for project 'etl'"),
        ("PUT", "/api/projects/etl/limit", b'{"cap": 2}', 400, "unknown field 'cap'"),
        ("PUT", "/api/projects/etl/limit", b"\xff\xfe", 400, "not"),
    ]
    for method, path, body, status, message in cases:
        async with http.request(method, url + path, data=body, headers=ADMIN) as r:
            answer = await r.json()
            assert r.status == status and message in answer["error"], (path, body, answer)
    assert em.pool.settings.max_workers == 2 and em.pool.sched.projects.limits == {}
    async with http.put(f"{url}/api/projects/etl/limit", json={"limit": 3}, headers=ADMIN) as r:
        assert r.status == 200 and await r.json() == {"project": "etl", "limit": 3}
    assert em.pool.sched.projects.limits == {"etl": 3}


async def test_requests_for_another_host_are_refused(running: Any) -> None:
    em, http, url = running
    async with http.get(f"{url}/api/status", headers={"Host": "attacker.example"}) as r:
        assert r.status == 403 and "loopback address only" in (await r.json())["error"]
    async with http.get(f"{url}/api/status", headers={"Host": f"localhost:{url.rsplit(':', 1)[1]}"}) as r:
        assert r.status == 200
    assert em.web.refusals["host"] == 1


async def test_live_feed_pushes_a_new_worker_and_refuses_foreign_origins(running: Any) -> None:
    _, http, url = running
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{url}/api/live", headers={"Origin": "http://evil.example"})
    assert refused.value.status == 403
    async with http.ws_connect(f"{url}/api/live", headers={"Origin": url}) as ws:
        first = json.loads((await ws.receive(timeout=10)).data)
        assert {w["id"] for w in first["workers"]} == {"local-1", "local-2"}
        async with http.post(f"{url}/api/scale", json={"minWorkers": 3, "maxWorkers": 3}, headers=ADMIN) as r:
            assert r.status == 200 and (await r.json())["decision"] == "bounds set to 3..3 on request"
        for _ in range(100):
            update = json.loads((await ws.receive(timeout=10)).data)
            if "local-3" in {w["id"] for w in update["workers"]}:
                break
        else:
            pytest.fail("the new worker never reached the live feed")
        assert update["pool"]["max_workers"] == 3
        assert update["scaling"]["last"] == "bounds set to 3..3 on request"


async def test_without_a_token_given_one_is_made_in_the_data_folder_and_works(tmp_path: Path) -> None:
    async with kernel_with_http(tmp_path, token=None) as kernel, aiohttp.ClientSession() as http:
        url = kernel.get_service("execution-manager").http_address
        made = Path(os.environ["MICROKERNEL_DATA_DIR"]) / "admin.token"
        assert made.stat().st_mode & 0o077 == 0
        async with http.post(f"{url}/api/workers/local-1/stop", headers=ADMIN) as r:
            assert r.status == 403 and (await r.json())["error"] == "wrong admin token"
        made_token = {"Authorization": f"Bearer {made.read_text().strip()}"}
        async with http.post(f"{url}/api/workers/local-9/stop", headers=made_token) as r:
            assert r.status == 404
        assert len(await get(http, f"{url}/api/workers")) == 2


async def test_a_port_in_use_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        kernel = Kernel([], settings={"execution-manager": {**EM_LOCAL, "http": {"port": port}}})
        with pytest.raises(SettingsError) as err:  # the port was given by the caller
            async with kernel:
                pass
    assert isinstance(err.value.__cause__, ConfigError)
    message = str(err.value)
    assert "execution-manager.http.port" in message and f"127.0.0.1:{port} is already in use" in message


async def test_a_real_node_shows_in_status_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.nodes import TOKEN as NODE_TOKEN, start_node, stop_node

    monkeypatch.setenv("MICROKERNEL_NODE_TOKEN", NODE_TOKEN)
    async with kernel_with_http(tmp_path, minWorkers=0, maxWorkers=1, nodes={"port": 0}) as kernel, \
            aiohttp.ClientSession() as http:
        em = kernel.get_service("execution-manager")
        url = em.http_address
        proc = await start_node(em.nodes_address, slots=2, node_id="alpha")
        try:
            async def node_slots() -> Any:
                workers = await get(http, f"{url}/api/workers")
                found = [w for w in workers if w["node"] == "alpha" and w["heartbeat_age"] is not None]
                return found if len(found) == 2 else None

            slots = await until(node_slots)
            assert {w["node_type"] for w in slots} == {"node"}
            assert all(w["host"] == "127.0.0.1" for w in slots)
            [node] = await get(http, f"{url}/api/nodes")
            assert node["id"] == "alpha" and node["slots"] == 2 and node["state"] == "available"
            assert (await get(http, f"{url}/api/status"))["nodes_address"] == em.nodes_address
            assert await em.submit(tasks.inc, 41) == 42
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
            assert 'microkernel_node_connections{state="available"} 1.0' in text
            assert 'microkernel_workers{kind="node",state="available"} 2.0' in text
        finally:
            assert await stop_node(proc) == 0
