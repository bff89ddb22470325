"""The sans-I/O pipe connection (a worker's), driven by bytes alone: no sockets, no processes."""

from __future__ import annotations

import msgpack
import pytest

from microkernel.services.execution_manager.wire import protocol as p
from microkernel.services.execution_manager.wire.connection import Connection, Framing
from microkernel.services.execution_manager.wire.pipe import PipeKernelSide, PipeWorkerSide


def raw(msg: object) -> bytes:
    """A frame holding any msgpack value, valid or not."""
    body = msgpack.packb(msg)
    return len(body).to_bytes(4, "big") + body


def hello(version: int = p.PROTOCOL_VERSION) -> bytes:
    return raw((p.HELLO, version, "w-1", 123, "3.11.7", {}))


def test_round_trip_byte_by_byte() -> None:
    kernel, worker = PipeKernelSide(), PipeWorkerSide()
    data = hello() + p.frame(p.Result(7, b"payload"))
    events = []
    for i in range(len(data)):
        events += kernel.receive_data(data[i : i + 1])
    assert events == [p.Hello(p.PROTOCOL_VERSION, "w-1", 123, "3.11.7", {}), p.Result(7, b"payload")]
    assert kernel.peer_hello is not None and kernel.peer_hello.worker_id == "w-1" and kernel.peer == "w-1"
    call = kernel.send(p.Call(3, p.CALL_FN, b"x")) + kernel.send(p.Cancel(3)) + kernel.send(p.Shutdown(True))
    assert worker.receive_data(call) == [p.Call(3, p.CALL_FN, b"x", 0.0), p.Cancel(3), p.Shutdown(True)]


def test_a_relay_keeps_answers_as_they_came_once() -> None:
    """A node agent forwards a worker's RESULT and ERROR frames to the kernel as they came:
    the bytes kept are exactly what encoding the message again would give, and the kernel's
    end of a node link reads them as the message."""

    relay = PipeKernelSide(keep_answers=True)
    result, error = p.Result(7, b"pickled", 0.25), p.Error(8, "ValueError", "bad", "tb", b"exc", 0.5)
    assert relay.receive_data(hello() + p.frame(result) + p.frame(error) + p.frame(p.Cancelled(9))) == [
        p.Hello(p.PROTOCOL_VERSION, "w-1", 123, "3.11.7", {}), result, error, p.Cancelled(9)]
    assert relay.answer_frame(7) == p.encode(result) and relay.answer_frame(8) == p.encode(error)
    assert relay.answer_frame(7) is None and relay.answer_frame(9) is None  # once; answers only
    plain = PipeKernelSide()
    plain.receive_data(hello() + p.frame(result))
    assert plain.answer_frame(7) is None  # kept only when asked
    decoder = p.decoder(p.ACCEPTS["node", "kernel", p.State.OPEN])
    assert decoder.decode(p.encode(result)) == result


def test_partial_frame_is_buffered() -> None:
    conn = PipeKernelSide()
    data = hello()
    assert conn.receive_data(data[:3]) == []
    assert conn.receive_data(data[3:-1]) == []
    assert len(conn.receive_data(data[-1:])) == 1


def test_every_message_type_round_trips() -> None:
    kernel, worker = PipeKernelSide(), PipeWorkerSide()
    kernel.receive_data(hello())
    to_kernel = [
        p.Result(1, b"r"), p.Error(2, "ValueError", "bad", "tb", None), p.Heartbeat(1.5, 10, 0),
        p.Progress(1, 0.5, "half"), p.Log(1, "info", "hi", {"k": 1}), p.Request(9, 1, "svc", b""),
        p.Goodbye("bye"),
    ]
    assert kernel.receive_data(b"".join(worker.send(e) for e in to_kernel)) == to_kernel
    to_worker = [p.Call(1, p.PIN, b"x", 2.5), p.Cancel(1), p.Response(9, True, b"ok"), p.Shutdown(False)]
    assert worker.receive_data(b"".join(kernel.send(e) for e in to_worker)) == to_worker


def test_unframed_mode_one_message_per_frame() -> None:
    kernel = PipeKernelSide(framing=Framing.MESSAGE)
    body = msgpack.packb((p.HELLO, p.PROTOCOL_VERSION, "w", 1, "3.11", {}))
    assert kernel.receive_data(body)[0].worker_id == "w"
    assert kernel.send(p.Cancel(4)) == msgpack.packb((p.CANCEL, 4))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (raw((p.RESULT, 1, b"x")), "expected HELLO first, got Result"),
        (hello(version=99), "wire version 99; this kernel speaks 3"),
        (b"\x00\x00\x00\x02\xc1\xc1", "undecodable frame"),
        (raw((42, 1)), "unknown message type 42"),
        (raw((p.CALL, 1, 0, b"")), "Call is not a message a kernel receives"),
        (raw((p.HELLO, 1, "w")), "Hello has 5 fields, got 2"),
        (raw((p.HELLO, "1", "w", 1, "3.11", {})), "Hello: Expected `int`, got `str`"),
        (raw({"not": "array"}), "msgpack array starting with its type"),
        (b"\xff\xff\xff\xff", "exceeds the limit"),
    ],
)
def test_protocol_errors(data: bytes, match: str) -> None:
    with pytest.raises(p.ProtocolError, match=match):
        PipeKernelSide(max_frame=1 << 20).receive_data(data)


def test_bad_role() -> None:
    class Server(Connection):
        conversation, role = "pipe", "server"

    with pytest.raises(ValueError, match="role must be one of node/kernel, node/node, pipe/kernel, pipe/worker"):
        Server()


def test_pending_tells_how_much_of_a_frame_is_missing() -> None:
    conn = PipeWorkerSide()
    frame = p.frame(p.Call(1, 0, b"x" * 1000, 0.0))
    assert conn.pending() == 0
    conn.receive_data(frame[:10])
    assert conn.pending() == len(frame) - 10
    assert len(conn.receive_data(frame[10:])) == 1 and conn.pending() == 0
