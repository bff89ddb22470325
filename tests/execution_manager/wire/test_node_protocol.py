"""The node protocol without sockets: handshake, authentication and checks, by bytes."""

from __future__ import annotations

import itertools
import re

import msgpack
import pytest

from microkernel.services.execution_manager.wire import node as n, protocol as p

TOKEN = b"token"


def nonces():
    counter = itertools.count()
    return lambda size: bytes([next(counter) % 256]) * size


def pair(node_token: bytes = TOKEN) -> tuple[n.NodeKernelSide, n.NodeSide]:
    kernel = n.NodeKernelSide(TOKEN, nonce=nonces())
    node = n.NodeSide(node_token, node_id="n1", info={"slots": 2})
    return kernel, node


def handshake(kernel: n.NodeKernelSide, node: n.NodeSide) -> list[list]:
    got = kernel.receive_data(node.hello())
    assert got == [] and kernel.state == "auth"
    assert node.receive_data(kernel.outgoing()) == []
    admitted = kernel.receive_data(node.outgoing())
    return admitted


def test_handshake_admits_a_node_holding_the_token_and_proves_the_kernel() -> None:
    kernel, node = pair()
    [hello] = handshake(kernel, node)
    assert type(hello) is p.NodeHello and hello.node_id == "n1" and kernel.info == {"slots": 2}
    assert kernel.state == "ready" and not kernel.is_open
    node.receive_data(kernel.welcome("s1", 1.5, 1 << 20, {"_kernel_services.x": "/srv/x"}))
    assert node.is_open and kernel.is_open
    assert node.session == "s1" and node.heartbeat_interval == 1.5 and node.max_frame == 1 << 20
    assert node.packages == {"_kernel_services.x": "/srv/x"}


def test_a_wrong_token_is_refused_with_4001() -> None:
    kernel, node = pair(b"not the token")
    with pytest.raises(p.ProtocolError) as info:
        handshake(kernel, node)
    assert info.value.code == n.CLOSE_AUTH and "wrong or missing token" in info.value.reason


def test_an_auth_replayed_from_another_session_is_refused() -> None:
    kernel, node = pair()
    handshake(kernel, node)
    recorded_hello = node.hello()
    node2 = n.NodeSide(TOKEN, node_id="n1")
    recorded_auth = None
    k1 = n.NodeKernelSide(TOKEN)
    k1.receive_data(node2.hello())
    node2.receive_data(k1.outgoing())
    recorded_auth = node2.outgoing()
    # An eavesdropper replays both frames to a new connection: the kernel's nonce differs.
    k2 = n.NodeKernelSide(TOKEN)
    k2.receive_data(recorded_hello)
    with pytest.raises(p.ProtocolError) as info:
        k2.receive_data(recorded_auth)
    assert info.value.code == n.CLOSE_AUTH


def test_a_kernel_without_the_token_is_not_trusted_by_the_node() -> None:
    impostor = n.NodeKernelSide(b"guess")
    node = n.NodeSide(TOKEN, node_id="n1")
    impostor.receive_data(node.hello())
    node.receive_data(impostor.outgoing())
    impostor.state = p.State.READY  # pretend it accepted the node's proof
    with pytest.raises(p.ProtocolError, match="failed to prove"):
        node.receive_data(impostor.welcome("s", 1.0, 1 << 20))
    assert not node.is_open


@pytest.mark.parametrize(
    ("data", "code", "match"),
    [
        (b"\xc1garbage", n.CLOSE_PROTOCOL, "not a msgpack message"),
        (b"\x91" * 5000 + b"\xc0", n.CLOSE_PROTOCOL, "nested too deep"),
        (msgpack.packb([99, 1]), n.CLOSE_PROTOCOL, "unknown message type 99"),
        (msgpack.packb({"a": 1}), n.CLOSE_PROTOCOL, "msgpack array starting with its type"),
        (msgpack.packb([p.NODE_HELLO, 7, "n1", b"x" * 32, {}]), n.CLOSE_VERSION, "wire version 7"),
        (msgpack.packb([p.NODE_HELLO, 1, "", b"x" * 32, {}]), n.CLOSE_PROTOCOL, "node id"),
        (msgpack.packb([p.AUTH, b"x"]), n.CLOSE_PROTOCOL, "expected NODE_HELLO first"),
        (msgpack.packb([p.RESULT, 1, b"x"]), n.CLOSE_PROTOCOL, "expected NODE_HELLO first"),
        (b"\x00" * (n.HANDSHAKE_MAX_FRAME + 1), n.CLOSE_TOO_BIG, "exceeds the limit"),
        (msgpack.packb([p.NODE_HELLO, 1, "n1"]), n.CLOSE_PROTOCOL, "NodeHello has 4 fields, got 2"),
        (msgpack.packb([p.NODE_HELLO, 1, "n1", b"x" * 32, {}])[:-1], n.CLOSE_PROTOCOL, "cut short"),
    ],
)
def test_bad_first_frames_are_refused_with_their_close_code(data: bytes, code: int, match: str) -> None:
    kernel = n.NodeKernelSide(TOKEN)
    with pytest.raises(p.ProtocolError, match=match) as info:
        kernel.receive_data(data)
    assert info.value.code == code


def test_after_the_handshake_messages_are_checked_by_direction_and_batched() -> None:
    kernel, node = pair()
    handshake(kernel, node)
    node.receive_data(kernel.welcome("s", 1.0, 1 << 20))
    batch = p.encode(p.Result(5, b"r")) + p.encode(p.NodeHeartbeat(3.0, 40.0, [(1, 2.0, 100)]))
    assert kernel.receive_data(batch) == [p.Result(5, b"r"), p.NodeHeartbeat(3.0, 40.0, [(1, 2.0, 100)])]
    assert kernel.receive_data(p.encode(p.Result(6, b"s"))) == [p.Result(6, b"s")]  # one alone: the fast path
    with pytest.raises(p.ProtocolError, match="SlotCall is not a message a kernel receives"):
        kernel.receive_data(p.encode(p.SlotCall(1, 2, 0, b"", 0.0)))
    assert node.receive_data(p.encode(p.SlotCall(1, 2, 0, b"p", 0.0))) == [p.SlotCall(1, 2, 0, b"p", 0.0)]
    for bad, why in [([p.RESULT, "5", b"r"], "Result: Expected `int`, got `str`"),
                     ([p.NODE_HEARTBEAT, 1.0, 2.0, [[1, 2.0]]], "NodeHeartbeat: Expected `array` of length 3"),
                     ([p.RESULT, 5, b"r", 1.0, 9], "Result has 3 fields, got 4")]:
        for data in (msgpack.packb(bad), p.encode(p.Result(1, b"")) + msgpack.packb(bad)):  # alone, and batched
            with pytest.raises(p.ProtocolError, match=re.escape(why)) as refused:
                kernel.receive_data(data)
            assert refused.value.code == n.CLOSE_PROTOCOL
    with pytest.raises(p.ProtocolError) as info:
        kernel.receive_data(b"\x00" * ((1 << 20) + 1))
    assert info.value.code == n.CLOSE_TOO_BIG


def test_slot_down_says_which_calls_had_begun_where_the_node_knows() -> None:
    kernel, node = pair()
    handshake(kernel, node)
    node.receive_data(kernel.welcome("s", 1.0, 1 << 20))
    exact = p.SlotDown(2, "killed by signal SIGKILL", -9, [41, 42])
    assert kernel.receive_data(p.encode(exact)) == [exact]
    # A node that does not know (an older agent) sends three fields: every call held may have begun.
    assert kernel.receive_data(msgpack.packb([p.SLOT_DOWN, 2, "gone", None])) == [p.SlotDown(2, "gone", None, None)]
    with pytest.raises(p.ProtocolError, match=re.escape("SlotDown: Expected `int`, got `str`")):
        kernel.receive_data(msgpack.packb([p.SLOT_DOWN, 2, "gone", None, ["41"]]))
