"""Random and truncated bytes against both sans-I/O protocols: a typed protocol error or
well-typed events, never another exception, never a hang (hypothesis)."""

from __future__ import annotations

import msgpack
import msgspec
from hypothesis import HealthCheck, given, settings, strategies as st

from microkernel.services.execution_manager.wire import node as n, protocol as p
from microkernel.services.execution_manager.wire.connection import Connection, Framing
from microkernel.services.execution_manager.wire.pipe import PipeKernelSide, PipeWorkerSide
from tests.execution_manager.wire.test_node_protocol import handshake, pair

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# msgpack values that look like messages: arrays starting with a known or unknown code.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=20), st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5),
                      inner, max_size=3), max_leaves=10)
codes = st.one_of(st.sampled_from(sorted(p.TYPES)), st.integers(-5, 60))  # both conversations' codes
messages = st.builds(lambda code, rest: [code, *rest], codes, st.lists(values, max_size=7))


def frame_of(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def well_typed(event: p.Message) -> None:
    """Every field holds its declared type (what the kernel relies on afterwards)."""
    msgspec.convert(msgspec.to_builtins(event), type(event), strict=True)


SIDES = {"kernel": PipeKernelSide, "worker": PipeWorkerSide}


def feed(conn: Connection, data: bytes) -> None:
    try:
        events = conn.receive_data(data)
    except p.ProtocolError:
        return
    for event in events:
        well_typed(event)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["kernel", "worker"]), st.booleans())
def test_random_bytes_give_only_protocol_errors(data: bytes, role: str, framed: bool) -> None:
    feed(SIDES[role](framing=Framing.STREAM if framed else Framing.MESSAGE, max_frame=1 << 16), data)


@FUZZ
@given(st.lists(messages, min_size=1, max_size=4), st.sampled_from(["kernel", "worker"]), st.data())
def test_message_shaped_frames_decode_typed_or_are_refused(
    batch: list[list[object]], role: str, data: st.DataObject
) -> None:
    conn = SIDES[role](max_frame=1 << 16)
    if role == "kernel":
        conn.receive_data(p.frame(p.Hello(p.PROTOCOL_VERSION, "w", 1, "3.11", {})))
    stream = b"".join(frame_of(msgpack.packb(m)) for m in batch)
    cut = data.draw(st.integers(0, len(stream)))
    feed(conn, stream[:cut])  # truncated: buffered, decoded as far as whole frames go
    feed(conn, stream[cut:])


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 299))
def test_truncated_valid_frames_wait_for_the_rest(tail: bytes, cut: int) -> None:
    conn = PipeWorkerSide()
    whole = p.frame(p.Call(1, p.CALL_FN, tail, 0.5))
    cut = min(cut, len(whole) - 1)
    assert conn.receive_data(whole[:cut]) == []
    assert conn.pending() == (len(whole) - cut if cut >= 4 else 0)
    assert conn.receive_data(whole[cut:]) == [p.Call(1, p.CALL_FN, tail, 0.5)]


def test_a_protocol_error_names_the_peer() -> None:
    conn = PipeKernelSide(peer="worker local-3 (pid 99)")
    try:
        conn.receive_data(frame_of(msgpack.packb([p.RESULT, 1, b"x"])))
    except p.ProtocolError as exc:
        assert exc.peer == "worker local-3 (pid 99)"
        assert str(exc) == "worker local-3 (pid 99): expected HELLO first, got Result"
    else:
        raise AssertionError("no ProtocolError")
    hello = PipeKernelSide()
    hello.receive_data(p.frame(p.Hello(p.PROTOCOL_VERSION, "local-4", 1, "3.11", {})))
    try:
        hello.receive_data(frame_of(msgpack.packb([p.RESULT, "one", b"x"])))
    except p.ProtocolError as exc:
        assert str(exc).startswith("local-4: Result: Expected `int`, got `str`")


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_node_link_refuses_random_bytes_with_a_close_code(data: bytes, admitted: bool) -> None:
    kernel, node = pair()
    if admitted:
        handshake(kernel, node)
        node.receive_data(kernel.welcome("s1", 1.0, 1 << 16))
    for link in (kernel, node):
        try:
            link.receive_data(data)
        except p.ProtocolError as exc:
            assert exc.code in (n.CLOSE_PROTOCOL, n.CLOSE_TOO_BIG, n.CLOSE_AUTH, n.CLOSE_VERSION)


@FUZZ
@given(st.lists(messages, min_size=1, max_size=3), st.booleans())
def test_node_link_checks_message_shaped_input(batch: list[list[object]], admitted: bool) -> None:
    kernel, node = pair()
    if admitted:
        handshake(kernel, node)
        node.receive_data(kernel.welcome("s1", 1.0, 1 << 16))
    data = b"".join(msgpack.packb(m) for m in batch)
    for link in (kernel, node):
        try:
            received = link.receive_data(data)
        except p.ProtocolError as exc:
            assert exc.code in (n.CLOSE_PROTOCOL, n.CLOSE_TOO_BIG, n.CLOSE_AUTH, n.CLOSE_VERSION)
        else:
            for msg in received:
                well_typed(msg)
