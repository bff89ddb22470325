"""Bad input on the node port: each is refused with its documented close code,
counted, logged without the token, and the hub keeps serving a real node."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgpack
import pytest
import structlog.testing
from websockets.asyncio.client import connect

from microkernel.plugins.websocket.listener import NodeHub
from microkernel.services.execution_manager.executors.testing import call, reply
from microkernel.services.execution_manager.wire import loads, node as n, protocol as p
from tests.nodes import TOKEN, RawNode, running_hub, start_node, stop_node, until

pytestmark = pytest.mark.anyio
PY = sys.version.split()[0]


@pytest.fixture
async def hub() -> AsyncIterator[NodeHub]:
    async with running_hub(authTimeout=1.0) as hub:
        proc = await start_node(hub.address, slots=1, node_id="n1")
        try:
            await until(lambda: "n1" in hub.sessions, what="the node to join")
            yield hub
        finally:
            assert await stop_node(proc) == 0


def hello(version: int = n.NODE_PROTOCOL_VERSION, node_id: str = "raw") -> bytes:
    return p.encode(p.NodeHello(version, node_id, b"\x01" * 32, {"python": PY}))


async def send_raw(url: str, *frames: bytes | str) -> tuple[int | None, str]:
    async with RawNode.connect(url) as raw:
        for frame in frames:
            await raw.ws.send(frame)
            if frames.index(frame) == 0 and len(frames) > 1:
                await raw.ws.recv()  # the challenge
        return await raw.closed_with()


async def no_token(url: str) -> tuple[int | None, str]:
    return await send_raw(url, hello(), p.encode(p.Auth(b"")))


async def handshake_as(url: str, python: str | None = None, **kwargs: str) -> tuple[int | None, str]:
    """Try the whole handshake as ``RawNode(**kwargs)``; how the kernel closed."""
    async with RawNode.connect(url, **kwargs) as raw:
        if python is not None:
            raw.link.info["python"] = python
        with contextlib.suppress(Exception):
            await raw.handshake()
        return await raw.closed_with()


async def wrong_token(url: str) -> tuple[int | None, str]:
    return await handshake_as(url, token="not-the-token")


async def replayed_token(url: str) -> tuple[int | None, str]:
    async with RawNode.connect(url, node_id="eve") as first:
        await first.ws.send(recorded_hello := first.link.hello())
        first.link.receive_data(await first.ws.recv())  # type: ignore[arg-type]
        recorded_auth = first.link.outgoing()
        await first.ws.send(recorded_auth)
        first.link.receive_data(await first.ws.recv())  # type: ignore[arg-type]
        assert first.link.is_open  # the genuine session was admitted
    return await send_raw(url, recorded_hello, recorded_auth)


async def silent(url: str) -> tuple[int | None, str]:
    return await send_raw(url)


async def bad_version(url: str) -> tuple[int | None, str]:
    return await send_raw(url, hello(version=99))


async def not_msgpack(url: str) -> tuple[int | None, str]:
    return await send_raw(url, b"\xc1\xc1 not msgpack")


async def text_frame(url: str) -> tuple[int | None, str]:
    return await send_raw(url, "hello")


async def too_big(url: str) -> tuple[int | None, str]:
    return await send_raw(url, b"\x00" * (n.HANDSHAKE_MAX_FRAME + 10))


async def deeply_nested(url: str) -> tuple[int | None, str]:
    return await send_raw(url, b"\x91" * 5000 + b"\xc0")


async def unknown_type(url: str) -> tuple[int | None, str]:
    return await send_raw(url, msgpack.packb([77, "x"]))


async def unassigned_result(url: str) -> tuple[int | None, str]:
    async with RawNode.connect(url) as raw:
        await raw.handshake()
        await raw.ws.send(p.encode(p.Result(123456, b"forged")))
        return await raw.closed_with()


async def other_python(url: str) -> tuple[int | None, str]:
    return await handshake_as(url, python="3.99.0")


async def duplicate_id(url: str) -> tuple[int | None, str]:
    return await handshake_as(url, node_id="n1")


Attack = Callable[[str], Awaitable[tuple[int | None, str]]]
ATTACKS: list[tuple[Attack, int, str, str]] = [
    (no_token, n.CLOSE_AUTH, "auth", "wrong or missing token"),
    (wrong_token, n.CLOSE_AUTH, "auth", "wrong or missing token"),
    (replayed_token, n.CLOSE_AUTH, "auth", "wrong or missing token"),
    (silent, n.CLOSE_AUTH_TIMEOUT, "auth-timeout", "no authentication within 1 s"),
    (bad_version, n.CLOSE_VERSION, "version", "wire version 99"),
    (not_msgpack, n.CLOSE_PROTOCOL, "protocol", "not a msgpack message"),
    (text_frame, n.CLOSE_TEXT, "text-frame", "text frames are not accepted"),
    (too_big, n.CLOSE_TOO_BIG, "too-big", ""),
    (deeply_nested, n.CLOSE_PROTOCOL, "protocol", "nested too deep"),
    (unknown_type, n.CLOSE_PROTOCOL, "protocol", "unknown message type 77"),
    (unassigned_result, n.CLOSE_NOT_ASSIGNED, "not-assigned", "call 123456, which was not assigned to node raw"),
    (other_python, n.CLOSE_VERSION, "version", "node runs Python 3.99.0"),
    (duplicate_id, n.CLOSE_DUPLICATE, "duplicate-id", "node id 'n1' is already connected"),
]


async def still_serving(hub: NodeHub) -> None:
    ex = hub.slot_executor("after", {"startTimeout": 20})
    await ex.start()
    try:
        ok, data = await reply(ex, call(p.CALL_FN, (pow, (3, 3), {})))
        assert ok and loads(data) == 27
    finally:
        await ex.stop()


@pytest.mark.parametrize(("attack", "code", "counter", "reason"), ATTACKS, ids=lambda a: getattr(a, "__name__", ""))
async def test_bad_input_is_refused_counted_and_harmless(
    hub: NodeHub, attack: Attack, code: int, counter: str, reason: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        got_code, got_reason = await attack(hub.address)
        await asyncio.sleep(0.05)
    assert got_code == code and reason in got_reason
    await asyncio.sleep(0.05)
    assert hub.refusals().get(counter) == 1
    assert [s.node_id for s in hub.sessions.values()] == ["n1"]
    await still_serving(hub)
    [refused] = [e for e in logs if e["event"] == "node connection refused"]
    assert refused["code"] == code and refused["peer"].startswith("127.0.0.1:")
    assert TOKEN not in repr(logs) and "not-the-token" not in repr(logs)


async def test_a_flood_of_bad_connections_does_not_stall_the_kernel(hub: NodeHub) -> None:
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)

    async def silent_one() -> None:
        with contextlib.suppress(Exception):
            async with connect(hub.address, compression=None, proxy=None, open_timeout=20) as ws:
                with contextlib.suppress(Exception):
                    await ws.recv()

    tick = asyncio.get_running_loop().create_task(ticker())
    try:
        flood = [silent_one() for _ in range(200)] + [wrong_token(hub.address) for _ in range(50)]
        attackers = asyncio.gather(*flood, return_exceptions=True)
        await asyncio.sleep(0.3)
        await still_serving(hub)  # while 250 bad connections are open
        async with asyncio.timeout(30):
            await attackers
    finally:
        tick.cancel()
    refused = hub.refusals()
    # maxWaiting (64) authenticate at once; the rest are closed with 1013 at once, so a
    # flood holds few descriptors and little memory for authTimeout.
    assert refused.get("auth", 0) + refused.get("auth-timeout", 0) + refused.get("too-many-waiting", 0) == 250
    assert refused.get("too-many-waiting", 0) > 0, refused
    # Liveness, not speed: the loop never froze while the flood was handled.
    assert max(lags) < 1.0, f"the event loop stalled for {max(lags):.2f} s"


async def test_past_max_waiting_a_connection_is_closed_at_once_with_1013() -> None:
    async with running_hub(authTimeout=5.0, maxWaiting=3) as hub:
        held = [await connect(hub.address, compression=None, proxy=None) for _ in range(3)]
        try:
            await until(lambda: hub._waiting == 3, what="three connections waiting")
            code, reason = await send_raw(hub.address)
            assert code == n.CLOSE_TRY_LATER and "waiting to authenticate" in reason
            assert hub.refusals().get("too-many-waiting") == 1
        finally:
            for ws in held:
                await ws.close()
