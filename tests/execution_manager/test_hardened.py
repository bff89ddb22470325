"""Hardened surfaces: what a request can make the kernel do is bounded, and a job's code
never runs in the kernel's process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from kernel import Kernel
from tests.nodes import TOKEN, start_node, stop_node


@contextlib.asynccontextmanager
async def in_process(data: Path, **jobs: Any) -> AsyncIterator[tuple[Kernel, httpx.AsyncClient]]:
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


@pytest.mark.anyio
async def test_a_job_reference_is_checked_without_running_any_of_its_code_in_the_kernel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = marker_package(tmp_path, "markpkg")
    monkeypatch.syspath_prepend(str(tmp_path))  # the kernel's path, which its workers are handed
    async with in_process(tmp_path / "data") as (_kernel, http):
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


# -- a real `kernel run`, probed from outside ---------------------------------------------------

NODE_TOKEN, ADMIN_TOKEN = TOKEN, "hardened-admin-token"  # (the raw node clients of tests/nodes hold TOKEN)


class Served:
    """``kernel --log-json run`` with the job API, the dashboard and the node listener on
    free ports; its addresses, its pid, and (once stopped) what it logged."""

    def __init__(self, folder: Path, *settings: str) -> None:
        data = folder / "data"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"MICROKERNEL_NODE_TOKEN": NODE_TOKEN, "MICROKERNEL_ADMIN_TOKEN": ADMIN_TOKEN,
                "MICROKERNEL_DATA_DIR": str(data)}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("kernel")), "--log-json", "run", str(folder),
             "--set", "jobs.api.port=0", "--set", "execution-manager.http.port=0",
             "--set", "execution-manager.nodes.port=0", "--set", "execution-manager.minWorkers=1",
             "--set", "execution-manager.maxWorkers=1", *settings],
            env=env, cwd=folder, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.head = []
        addresses: dict[str, str] = {}
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.head.append(line)
            for prefix in ("jobs:", "dashboard:", "nodes connect with: kernel node --connect"):
                if line.startswith(prefix):
                    addresses[prefix.split(":")[0]] = line[len(prefix):].split()[0].rstrip("/")
            if len(addresses) == 3:
                break
        else:
            raise AssertionError("the kernel did not start:\n" + "".join(self.head))
        self.api, self.dashboard, self.nodes = addresses["jobs"], addresses["dashboard"], addresses["nodes connect with"]
        self.token = (data / "jobs.token").read_text().strip()
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> str:
        """SIGTERM; everything it logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, rest = self.proc.communicate(timeout=60)
        return "".join(self.head) + rest

    def descriptors(self) -> int:
        return psutil.Process(self.proc.pid).num_fds()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    kernel = Served(tmp_path)
    yield kernel
    if kernel.proc.poll() is None:
        kernel.proc.kill()
        kernel.proc.communicate()


def raw(url: str, data: bytes) -> bytes:
    """Send ``data`` as it is to the server at ``url``; its answer's first line."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(65536).split(b"\r\n", 1)[0]


MALFORMED: list[tuple[str, dict[str, str], bytes, int, str]] = [
    # (what, headers, body, status, a piece of the error)
    ("invalid UTF-8", {"Content-Type": "application/json"}, b'{"function": "math:\xff"}', 400, "not UTF-8"),
    ("a bogus charset", {"Content-Type": "application/json; charset=bogus"}, b"{}", 415, "charset"),
    ("JSON nested 5,000 deep", {}, b"[" * 5000 + b"]" * 5000, 400, "nests deeper than 32"),
    ("an integer of 5,000 digits", {}, b'{"function": "math:sqrt", "args": [' + b"9" * 5000 + b"]}", 400, "digits"),
    ("a float out of range", {}, b'{"function": "math:sqrt", "args": [1e999]}', 400, "finite"),
    ("NaN", {}, b'{"function": "math:sqrt", "args": [NaN]}', 400, "NaN"),
    ("Infinity", {}, b'{"function": "math:sqrt", "args": [-Infinity]}', 400, "Infinity"),
    ("a lone surrogate in name", {}, b'{"function": "math:sqrt", "name": "\\ud800"}', 400, "surrogate"),
    ("a lone surrogate in key", {}, b'{"function": "math:sqrt", "key": "a\\udfff"}', 400, "surrogate"),
    ("a lone surrogate in project", {}, b'{"function": "math:sqrt", "project": "\\ud800"}', 400, "surrogate"),
    ("a lone surrogate in a key of kwargs", {}, b'{"function": "math:sqrt", "kwargs": {"\\ud800": 1}}', 400,
     "surrogate"),
    ("a gzip body", {"Content-Encoding": "gzip"}, b"garbage", 415, "compressed"),
    ("a timeout of 1e308", {}, b'{"function": "math:sqrt", "args": [1], "timeout": 1e308}', 400, "timeout"),
    ("a project name of 10,000 characters", {}, b'{"function": "math:sqrt", "project": "' + b"p" * 10000 + b'"}', 400,
     "project"),
    ("not JSON", {}, b"{nope", 400, "not JSON"),
    ("a form instead of JSON", {"Content-Type": "application/x-www-form-urlencoded"}, b"function=math:sqrt", 400,
     "not JSON"),
]


@pytest.mark.parametrize(("what", "headers", "body", "status", "said"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_job_is_a_4xx_naming_what_is_wrong_and_nothing_is_kept(
        served: Served, what: str, headers: dict[str, str], body: bytes, status: int, said: str) -> None:
    with httpx.Client(base_url=served.api, headers=served.auth, timeout=30) as http:
        answer = http.post("/jobs", content=body, headers=headers)
        assert answer.status_code == status, (what, answer.text)
        assert said in answer.json()["error"], (what, answer.text)
        assert http.get("/jobs").json()["jobs"] == []  # nothing kept
        job = http.post("/jobs", json={"function": "math:factorial", "args": [5]}).json()
        assert http.get(f"/jobs/{job['id']}/result", params={"wait": 30}).json()["result"] == 120
    log = served.stop()
    assert "Traceback" not in log and all(line.startswith("{") or line.startswith(("kernel running", "jobs:",
               "dashboard:", "nodes connect")) for line in log.splitlines()), log


def test_bad_queries_headers_and_admin_input_are_4xx(served: Served) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(timeout=30) as http:
        for url, headers, status in [
            (f"{served.api}/jobs/x/logs?after=99999999999999999999", served.auth, 400),
            (f"{served.api}/jobs/x/logs?after=\u00b2", served.auth, 400),
            (f"{served.api}/jobs?limit=1001", served.auth, 400),
            (f"{served.api}/jobs?limit=\u0661", served.auth, 400),
            (f"{served.api}/jobs?state=nope", served.auth, 400),
            (f"{served.api}/jobs/x/result?wait=nan", served.auth, 400),
            (f"{served.api}/jobs", {"Authorization": "Bearer"}, 401),
            (f"{served.api}/jobs", {"Authorization": "Basic abc"}, 401),
            (f"{served.api}/jobs", {"Authorization": "Bearer wrong"}, 403),
        ]:
            answer = http.get(url, headers=headers)
            assert answer.status_code == status and answer.json()["error"], (url, answer.text)
        for body, said in [({"minWorkers": 100000}, "0-4096"), ({"minWorkers": 3, "maxWorkers": 2}, "above"),
                           ({"maxWorkers": -1}, "0-4096"), ({"colour": 1}, "unknown field"),
                           ({"minWorkers": 1.5}, "integer")]:
            answer = http.post(f"{served.dashboard}/api/scale", json=body, headers=admin)
            assert answer.status_code == 400 and said in answer.json()["error"], (body, answer.text)
        answer = http.put(f"{served.dashboard}/api/projects/{'p' * 500}/limit", json={"limit": 2}, headers=admin)
        assert answer.status_code == 400 and "project" in answer.json()["error"]
    assert raw(served.api, b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xe9\xe9\r\n\r\n") \
        == b"HTTP/1.1 401 Unauthorized"
    assert raw(served.dashboard, b"GET /api/status HTTP/1.1\r\nHost: [\r\n\r\n") == b"HTTP/1.1 403 Forbidden"
    assert raw(served.dashboard, b"GET /api/live HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://[\r\n"
               b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n") == b"HTTP/1.1 403 Forbidden"
    log = served.stop()
    assert "Traceback" not in log, log


def test_a_node_message_nested_too_deep_is_refused_with_a_close_code_before_and_after_auth() -> None:
    from microkernel.services.execution_manager.wire import node as n, protocol as p

    deep = b"\x91" * 5000 + b"\xc0"
    hello = b"\x95\x14\x01\xa1x\xc4\x20" + b"a" * 32 + b"\x81\xa1i" + deep  # NODE_HELLO whose info nests
    for data in (hello, deep):
        with pytest.raises(p.ProtocolError) as refused:
            n.NodeKernelSide(b"token").receive_data(data)
        assert refused.value.code == n.CLOSE_PROTOCOL and "nested too deep" in refused.value.reason
    # An authenticated node's deep message: the same refusal, never an error of the decoder.
    kernel, node = n.NodeKernelSide(b"token"), n.NodeSide(b"token", node_id="n1")
    kernel.receive_data(node.hello())
    node.receive_data(kernel.outgoing())
    kernel.receive_data(node.outgoing())
    node.receive_data(kernel.welcome("s", 1.0, 1 << 20))
    assert kernel.is_open and node.is_open
    log = b"\x95\x07\x01\xa1i\xa1m\x81\xa1a" + deep  # LOG whose fields (of type Any) nest
    for data in (deep, log):
        with pytest.raises(p.ProtocolError) as refused:
            kernel.receive_data(data)
        assert refused.value.code == n.CLOSE_PROTOCOL, refused.value.reason


def test_refusals_are_logged_at_most_so_often_and_say_what_was_held_back() -> None:
    from kernel.logs import Throttle

    throttle = Throttle(most=3, per=0.2)
    said = [throttle("refused") for _ in range(10)]
    assert said == [0, 0, 0, None, None, None, None, None, None, None]
    assert throttle("another kind") == 0  # counted apart
    import time

    time.sleep(0.25)
    assert throttle("refused") == 7  # the next window's first line says how many were held back


def test_a_list_of_jobs_stops_at_its_byte_budget(tmp_path: Path) -> None:
    from microkernel.services.jobs.model import Job
    from microkernel.services.jobs.store import SqliteStore

    store = SqliteStore(tmp_path)
    try:
        for i in range(20):
            job = Job(id=f"j{i:02}", type="function", task={"function": "math:sqrt", "pad": "x" * 100_000})
            store.add(job)
        assert len(store.select(limit=100)) == 20
        bounded = store.select(limit=100, max_bytes=350_000)
        assert [j.id for j in bounded] == ["j19", "j18", "j17"]  # newest first, until the budget is spent
        assert len(store.select(limit=100, max_bytes=1)) == 1  # one at least
    finally:
        store.close()


def test_truncated_and_badly_chunked_bodies_are_4xx(tmp_path: Path) -> None:
    served = Served(tmp_path, "--set", "jobs.api.bodyTimeout=1")
    try:
        token = f"Authorization: Bearer {served.token}\r\n".encode()
        truncated = (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n" + token + b"\r\n"
                     b'{"function": "ma')
        assert raw(served.api, truncated) == b"HTTP/1.1 408 Request Timeout"  # the rest never comes
        host, port = served.api.split("//")[1].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(truncated)
            sock.shutdown(socket.SHUT_WR)  # the client gives up half-way: nothing to answer, nothing kept
            answer = sock.recv(65536)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer
        chunked = (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n" + token
                   + b"\r\nzz\r\n{}\r\n0\r\n\r\n")
        assert raw(served.api, chunked).split(b" ")[1] == b"400"  # aiohttp's parser answers it (HTTP/1.0)
        with httpx.Client(base_url=served.api, headers=served.auth, timeout=30) as http:
            assert http.get("/jobs").json()["jobs"] == []  # nothing kept
    finally:
        if sys.exc_info()[0] is not None:
            served.proc.kill()
    assert "Traceback" not in served.stop()


def test_a_thousand_idle_and_slow_clients_of_one_server_leave_the_others_and_a_node_working(tmp_path: Path) -> None:
    import resource
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))  # this test's own sockets
    # maxWorkers 0: no local worker, so a job that succeeds ran on the node.
    kernel = Served(tmp_path, "--set", "execution-manager.maxWorkers=0", "--set", "execution-manager.minWorkers=0",
                    "--set", "execution-manager.http.maxConnections=200")
    node = None
    held: list[socket.socket] = []
    try:
        before = kernel.descriptors()
        host, port = kernel.dashboard.split("//")[1].split(":")
        for i in range(1000):
            sock = socket.create_connection((host, int(port)), timeout=10)
            if i % 2:
                sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers that never end
            held.append(sock)
        assert kernel.descriptors() < before + 300  # past its cap, the dashboard closes them at once
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MICROKERNEL_NODE_TOKEN": NODE_TOKEN}
        node = subprocess.Popen([str(Path(sys.executable).with_name("kernel")), "node", "--connect", kernel.nodes,
                                 "--slots", "1", "--node-id", "legit"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with httpx.Client(base_url=kernel.api, headers=kernel.auth, timeout=30) as http:
            job = http.post("/jobs", json={"function": "math:factorial", "args": [6]}).json()
            assert http.get(f"/jobs/{job['id']}/result", params={"wait": 30}).json()["result"] == 720
        # The dashboard itself: the held connections time out (clientTimeout, 5 s), and it answers again.
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{kernel.dashboard}/api/pool", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the dashboard did not come back"
            time.sleep(0.5)
    finally:
        for sock in held:
            sock.close()
        if node is not None:
            node.terminate()
            node.wait(timeout=20)
    time.sleep(1.0)
    assert kernel.descriptors() <= before + 10, (before, kernel.descriptors())
    log = kernel.stop()
    assert "Traceback" not in log
    assert log.count("connection cap reached") >= 1


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_the_probe_leaves_the_kernel_serving_with_a_clean_log_and_its_resources_back(tmp_path: Path) -> None:
    """Ten minutes of an attacker on the same machine, in a few seconds: malformed bodies
    and headers, tokens of every shape, slow clients, random frames and a replayed AUTH
    at the node listener. Then a job runs on a node that joined, the log holds no
    traceback, and the kernel's memory and descriptors are back near where they were."""
    import asyncio
    import random

    from tests.plugins.websocket import test_node_refusals as attacks

    kernel = Served(tmp_path, "--set", "execution-manager.maxWorkers=0", "--set", "execution-manager.minWorkers=0",
                    "--set", "jobs.api.maxConnections=100")
    node = None
    try:
        me = psutil.Process(kernel.proc.pid)
        await asyncio.sleep(1.0)
        rss, fds = me.memory_info().rss, kernel.descriptors()
        rng = random.Random(24)
        async with httpx.AsyncClient(timeout=15) as http:
            for _ in range(3):
                for _what, headers, body, _status, _said in MALFORMED:
                    answer = await http.post(f"{kernel.api}/jobs", content=body, headers=kernel.auth | headers)
                    assert 400 <= answer.status_code < 500
                for token in ["", "Bearer", "Bearer " + "x" * 5000, "Bearer " + kernel.token[:-1], "Basic " + kernel.token,
                              "bearer " + kernel.token.upper(), "Bearer " + kernel.token + "x"]:
                    answer = await http.get(f"{kernel.api}/jobs", headers={"Authorization": token})
                    assert answer.status_code in (401, 403), token
                for _ in range(50):
                    answer = await http.post(f"{kernel.api}/jobs", content=rng.randbytes(rng.randrange(1, 400)),
                                             headers=kernel.auth)
                    assert 400 <= answer.status_code < 500
        # Slow clients: headers that never end, bodies that never come.
        host, port = kernel.api.split("//")[1].split(":")
        slow = []
        for i in range(150):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /jobs HTTP/1.1\r\nHost: x\r\n" if i % 2 else
                         b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nAuthorization: Bearer "
                         + kernel.token.encode() + b"\r\n\r\n{")
            slow.append((reader, writer))
        # The node listener: random frames before auth, every refusal of the suite, a replayed AUTH.
        for attack in (attacks.not_msgpack, attacks.text_frame, attacks.too_big, attacks.deeply_nested,
                       attacks.unknown_type, attacks.wrong_token, attacks.silent, attacks.bad_version,
                       attacks.replayed_token):
            code, _ = await attack(kernel.nodes)
            assert code is not None and code != 1011, attack.__name__
        for _ in range(30):
            code, _ = await attacks.send_raw(kernel.nodes, rng.randbytes(rng.randrange(1, 2000)))
            assert code is not None and code != 1011
        # The slow ones are closed by the kernel (clientTimeout, bodyTimeout), not by us.
        await asyncio.sleep(12)
        assert all([await _closed(reader) for reader, _ in slow])
        node = await start_node(kernel.nodes, slots=1, node_id="legit")
        async with httpx.AsyncClient(base_url=kernel.api, headers=kernel.auth, timeout=60) as http:
            job = (await http.post("/jobs", json={"function": "math:factorial", "args": [7]})).json()
            done = (await http.get(f"/jobs/{job['id']}/result", params={"wait": 60})).json()
            assert done["result"] == 5040 and done["worker"].startswith("legit"), done
        await stop_node(node)
        node = None
        await asyncio.sleep(1.0)
        assert kernel.descriptors() <= fds + 10, (fds, kernel.descriptors())
        assert me.memory_info().rss < rss + 40 * 2**20, (rss, me.memory_info().rss)
        for _, writer in slow:
            writer.close()
    finally:
        if node is not None:
            await stop_node(node)
        if sys.exc_info()[0] is not None:
            kernel.proc.kill()
    log = kernel.stop()
    assert "Traceback" not in log, log[-3000:]
    assert all(line.startswith("{") or ": " in line for line in log.splitlines())


async def _closed(reader: Any) -> bool:
    """Whether the server has closed this connection (what it sends ends)."""
    import asyncio

    try:
        async with asyncio.timeout(2):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:  # reset: closed too
        pass
    return True
