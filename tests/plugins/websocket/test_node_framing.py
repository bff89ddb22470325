"""The websocket hot path: whole binary frames split and built by plugins.websocket.framing,
everything else left to websockets. Bytes in, pieces out; then the same over real sockets."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from microkernel.plugins.websocket.framing import FrameSplitter, binary_frame
from microkernel.services.execution_manager.executors.testing import call, reply
from microkernel.services.execution_manager.wire import dumps, loads, node as n, protocol as p
from tests.nodes import RawNode, running_hub, until

HTTP = b"GET / HTTP/1.1\r\nHost: k\r\nUpgrade: websocket\r\n\r\n"
SIZES = [0, 1, 125, 126, 65535, 65536, 70_000]


def split(stream: bytes, chunk: int, *, masked: bool = True, max_size: int | None = 1 << 20) -> list[tuple]:
    """The pieces of HTTP + ``stream`` fed ``chunk`` bytes at a time, after the HTTP head's."""
    splitter = FrameSplitter(masked=masked)
    assert [bytes(raw) for _, raw in splitter.feed(HTTP, max_size)] == [HTTP]
    pieces = []
    for i in range(0, len(stream), chunk):
        pieces += [(payload, bytes(raw)) for payload, raw in splitter.feed(stream[i:i + chunk], max_size)]
    return pieces


def library_frame(opcode: Opcode, data: bytes, *, fin: bool = True, rsv1: bool = False, mask: bool = True) -> bytes:
    frame = Frame(opcode, data, fin=fin).serialize(mask=mask)
    return bytes([frame[0] | 0x40]) + frame[1:] if rsv1 else frame  # websockets will not build RSV1 itself


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mask", [True, False], ids=["client-to-server", "server-to-client"])
def test_whole_binary_frames_come_out_as_payloads_however_the_bytes_arrive(size: int, mask: bool) -> None:
    payloads = [bytes([i % 251]) * size for i in range(3)]
    stream = b"".join(binary_frame(data, mask=mask) for data in payloads)
    for chunk in (1, 7, 4096, len(stream)):
        pieces = split(stream, chunk, masked=mask)
        assert [payload for payload, _ in pieces if payload is not None] == payloads
        assert b"".join(raw for _, raw in pieces) == stream  # nothing lost, nothing reordered


def test_the_http_head_passes_through_even_when_its_end_is_split_across_reads() -> None:
    frame = binary_frame(b"call", mask=True)
    splitter = FrameSplitter(masked=True)
    head, rest = (HTTP + frame)[: len(HTTP) - 2], (HTTP + frame)[len(HTTP) - 2:]
    first = splitter.feed(head, 1 << 20)
    assert [(payload, bytes(raw)) for payload, raw in first] == [(None, head)] and splitter.in_upgrade
    second = [(payload, bytes(raw)) for payload, raw in splitter.feed(rest, 1 << 20)]
    assert second == [(None, b"\r\n"), (b"call", frame)] and not splitter.in_upgrade


@pytest.mark.parametrize(("frame", "why"), ids=lambda v: v if isinstance(v, str) else "", argvalues=[
    (library_frame(Opcode.TEXT, b"hello"), "text"),
    (library_frame(Opcode.PING, b"p"), "control"),
    (library_frame(Opcode.CLOSE, b"\x03\xe8"), "close"),
    (library_frame(Opcode.BINARY, b"part", fin=False), "fragment"),
    (library_frame(Opcode.CONT, b"part"), "continuation"),
    (library_frame(Opcode.BINARY, b"zipped", rsv1=True), "compressed"),
    (library_frame(Opcode.BINARY, b"bare", mask=False), "unmasked from a client"),
])
def test_every_other_frame_goes_to_websockets_whole(frame: bytes, why: str) -> None:
    call_frame = binary_frame(b"call", mask=True)
    pieces = split(call_frame + frame + call_frame, 3)
    assert [payload for payload, _ in pieces] == [b"call", None, b"call"], why
    assert pieces[1][1] == frame


def test_a_frame_over_the_limit_and_all_after_it_go_to_websockets() -> None:
    big, small = binary_frame(b"x" * 1000, mask=True), binary_frame(b"ok", mask=True)
    splitter = FrameSplitter(masked=True)
    pieces = splitter.feed(HTTP + small + big[:10], 999)
    pieces += splitter.feed(big[10:] + small, 999)
    assert [payload for payload, _ in pieces] == [None, b"ok", None, None]
    assert b"".join(bytes(raw) for _, raw in pieces) == HTTP + small + big + small
    assert splitter.passthrough


def test_built_frames_parse_as_websockets_frames_and_the_stream_stays_valid_for_it() -> None:
    """What is left for websockets is a valid stream: its parser still answers a ping
    between two fast frames, and parses our frames as the same binary messages."""
    server = ServerProtocol(max_size=1 << 20)
    server.state = State.OPEN
    server.parser = server.parse()  # past the upgrade: frames from here (as after a handshake)
    next(server.parser)
    stream = binary_frame(b"a" * 70_000, mask=True) + library_frame(Opcode.PING, b"hi") + binary_frame(b"b", mask=True)
    splitter = FrameSplitter(masked=True)
    splitter.in_upgrade = False
    taken = []
    for payload, raw in splitter.feed(stream, 1 << 20):
        if payload is not None:
            taken.append(payload)
            server.receive_data(bytes(raw))  # the library parses our frames to the same data
        else:
            server.receive_data(bytes(raw))
    events = server.events_received()
    assert [(e.opcode, len(e.data)) for e in events] == [(Opcode.BINARY, 70_000), (Opcode.PING, 2), (Opcode.BINARY, 1)]
    assert [bytes(e.data) for e in events if e.opcode is Opcode.BINARY] == taken
    assert server.data_to_send() == [library_frame(Opcode.PONG, b"hi", mask=False)]


# -- over real sockets: the kernel's hub and a hand-driven node ----------------------------

@pytest.mark.anyio
async def test_after_admission_a_frame_over_max_frame_is_refused_and_the_hub_serves_on() -> None:
    async with running_hub(authTimeout=5.0, maxFrame=64 * 1024) as hub:
        async with RawNode.connect(hub.address, node_id="big") as raw:
            await raw.handshake()
            await until(lambda: "big" in hub.sessions, what="the node to join")
            await raw.ws.send(b"\x00" * (64 * 1024 + 1))
            code, _ = await raw.closed_with()
        assert code == n.CLOSE_TOO_BIG
        await until(lambda: hub.refusals().get("too-big") == 1, what="the refusal to be counted")
        async with RawNode.connect(hub.address, node_id="next") as raw:
            await raw.handshake()
            await until(lambda: "next" in hub.sessions, what="the next node to join")  # the hub serves on
            await raw.ws.send(p.encode(p.SlotUp(1, 4242)))
            ex = hub.slot_executor("w", {"startTimeout": 5})
            await ex.start()
            replied = asyncio.ensure_future(reply(ex, call(p.CALL_FN, (pow, (2, 5), {}))))
            msg = raw.link.receive_data(await raw.ws.recv())  # type: ignore[arg-type]
            [sent] = msg
            assert type(sent) is p.SlotCall and sent.slot == 1
            await raw.ws.send(p.encode(p.Result(sent.call_id, dumps(32))))
            ok, data = await asyncio.wait_for(replied, 5)
            assert ok and loads(data) == 32
            await ex.stop(drain=False)


@pytest.mark.anyio
async def test_after_admission_a_binary_frame_inside_a_fragmented_message_is_a_protocol_error() -> None:
    async with running_hub(authTimeout=5.0) as hub:
        async with RawNode.connect(hub.address, node_id="frag") as raw:
            await raw.handshake()
            await until(lambda: "frag" in hub.sessions, what="the node to join")
            raw.ws.transport.write(library_frame(Opcode.BINARY, b"\x90", fin=False)
                                   + binary_frame(p.encode(p.NodeHeartbeat(1.0, 2.0, [])), mask=True))
            code, reason = await raw.closed_with()
        assert code == 1002 and "continuation" in reason  # websockets' own refusal, not our fast path's
        await until(lambda: "frag" not in hub.sessions, what="the session to end")

