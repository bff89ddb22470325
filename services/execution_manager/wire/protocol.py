"""The wire protocol between the kernel and its workers, sans I/O.

Bytes in, events out; messages in, bytes out. This module does no I/O and imports no
event loop: the pipe transport of local workers drives the same :class:`Connection`
as tests do.

Each message is a typed value (a msgspec ``Struct``) whose encoding is a msgpack array
``[type, *fields]``; ``type`` is the message's code in the one code table below. On
byte streams (pipes, sockets) a frame is prefixed by its length as a 4-byte big-endian
integer; on message transports (one websocket binary message each) the prefix is left
out. Payloads of Python objects are pickled bytes inside the envelope; the envelope is
plain msgpack and is decoded into the message's declared field types (an ``int`` is an
int, a payload is bytes) before anything is unpickled, so a peer that sends garbage
gets a :class:`ProtocolError` naming it, never a failure deep inside the kernel.

Conversation::

    worker -> kernel   HELLO (wire version, worker id, pid, python version, info)
    kernel -> worker   CALL (call id, kind, payload, soft timeout) ... CANCEL, SHUTDOWN,
                       RESPONSE, HEARTBEAT (a ping to an idle worker, answered in kind)
    worker -> kernel   RESULT | ERROR (call id, ...), CANCELLED (a cancelled call it
                       dropped before it began), HEARTBEAT, PROGRESS, LOG, REQUEST, GOODBYE

Call ids are task ids: every attempt of a call carries its call's. A late answer to an
attempt the kernel gave up comes from a worker the call is no longer assigned to, and
is dropped there (the scheduler keeps which worker holds each attempt).
"""

from __future__ import annotations

import struct
from typing import Any, Union

import msgspec

# Raised with each release whose pickles name other module paths (2: the execution
# manager's modules moved into folders), so a peer of another one is refused before
# anything is unpickled. A different package version of the same wire version is
# admitted, with a warning, for rolling upgrades.
PROTOCOL_VERSION = 2
# The close codes every connection refuses with (the node conversation adds its own, see
# ``wire.node``).
CLOSE_PROTOCOL, CLOSE_VERSION = 4000, 4003
# Frame limits, one per conversation, all here (a connection is given its own).
PIPE_MAX_FRAME = 512 * 1024 * 1024  # pipes between trusted local processes
NODE_MAX_FRAME = 64 * 1024 * 1024  # a node's messages once admitted (custom.nodes.maxFrame's default)
HANDSHAKE_MAX_FRAME = 16 * 1024  # what an unauthenticated node may send in one message

# The code table: every message type, of both conversations. A worker's pipe uses 0-11;
# a node's connection (``wire.node``) uses 20-34 and the call traffic of the pipe's
# (RESULT, ERROR, PROGRESS, LOG, REQUEST, RESPONSE), which travels unchanged.
HELLO, CALL, RESULT, ERROR, CANCEL, HEARTBEAT = 0, 1, 2, 3, 4, 5
PROGRESS, LOG, REQUEST, RESPONSE, SHUTDOWN, GOODBYE = 6, 7, 8, 9, 10, 11
NODE_HELLO, CHALLENGE, AUTH, WELCOME = 20, 21, 22, 23
SLOT_CALL, SLOT_CANCEL, ABORT, STOP_SLOT, BYE = 24, 25, 26, 27, 28
SLOT_UP, SLOT_DOWN, CANCELLED, NODE_HEARTBEAT, DRAINING = 30, 31, 32, 33, 34

# Kinds of CALL.
CALL_FN = 0  # payload: pickle((fn, args, kwargs))
CALL_METHOD = 1  # payload: pickle((instance, method, args, kwargs)), run on a replica
PIN = 2  # payload: pickle((key, instance)); the instance stays on the worker
CALL_PINNED = 3  # payload: pickle((key, method, args, kwargs))
UNPIN = 4  # payload: pickle(key); the result is the instance, state and all


class ProtocolError(Exception):
    """The peer broke the protocol: bad framing, unknown message, wrong fields or
    version. ``peer`` names it (a worker id or an address) when the connection knows;
    ``code`` is the close code it is refused with (:data:`CLOSE_VERSION` for another
    wire version)."""

    def __init__(self, message: str, peer: str = "", code: int = CLOSE_PROTOCOL) -> None:
        self.peer = peer
        self.code = code
        self.detail = message  # what is wrong, without the peer's name
        super().__init__(f"{peer}: {message}" if peer else message)


class _Message(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """Base of every message: encoded as ``[code, *fields]``."""


class Hello(_Message, tag=HELLO, forbid_unknown_fields=False):  # a later version may add fields
    version: int
    worker_id: str
    pid: int
    python: str
    info: dict[str, Any]


class Call(_Message, tag=CALL):
    call_id: int
    kind: int
    payload: bytes
    soft_timeout: float = 0.0  # seconds after which the worker raises inside the call; 0: none


class Result(_Message, tag=RESULT):
    call_id: int
    payload: bytes
    ran: float = 0.0  # seconds the call ran on its worker (0: not measured)


class Error(_Message, tag=ERROR):
    call_id: int
    type_name: str
    message: str
    traceback: str
    exception: bytes | None  # the pickled exception, when it pickles
    ran: float = 0.0  # seconds the call ran on its worker (0: not measured)


class Cancel(_Message, tag=CANCEL):
    call_id: int


class Heartbeat(_Message, tag=HEARTBEAT):
    cpu_percent: float
    rss: int
    running: int


class Progress(_Message, tag=PROGRESS):
    call_id: int
    fraction: float
    message: str


class Log(_Message, tag=LOG):
    call_id: int
    level: str
    message: str
    fields: dict[str, Any]


class Request(_Message, tag=REQUEST):
    request_id: int
    call_id: int
    route: str
    payload: bytes


class Response(_Message, tag=RESPONSE):
    request_id: int
    ok: bool
    payload: bytes


class Shutdown(_Message, tag=SHUTDOWN):
    drain: bool


class Goodbye(_Message, tag=GOODBYE):
    reason: str


# -- a node's connection (see wire.node for the conversation) ------------------


class NodeHello(_Message, tag=NODE_HELLO, forbid_unknown_fields=False):  # a later version may add fields
    version: int
    node_id: str
    nonce: bytes
    info: dict[str, Any]


class Challenge(_Message, tag=CHALLENGE):
    nonce: bytes


class Auth(_Message, tag=AUTH):
    proof: bytes


class Welcome(_Message, tag=WELCOME):
    session: str
    proof: bytes
    heartbeat_interval: float
    max_frame: int
    packages: dict[str, str]  # synthetic service package -> folder


class SlotCall(_Message, tag=SLOT_CALL):
    slot: int
    call_id: int
    kind: int
    payload: bytes
    soft_timeout: float = 0.0


class SlotCancel(_Message, tag=SLOT_CANCEL):
    slot: int
    call_id: int


class Abort(_Message, tag=ABORT):
    slot: int
    call_id: int
    reason: str


class StopSlot(_Message, tag=STOP_SLOT):
    slot: int
    replace: bool  # start another worker process in its place (recycling)


class Bye(_Message, tag=BYE):
    reason: str


class SlotUp(_Message, tag=SLOT_UP):
    slot: int
    pid: int


class SlotDown(_Message, tag=SLOT_DOWN):
    slot: int
    reason: str
    exitcode: int | None
    began: list[int] | None = None  # the calls it held that had begun, where the node knows exactly


class Cancelled(_Message, tag=CANCELLED):
    call_id: int


class NodeHeartbeat(_Message, tag=NODE_HEARTBEAT):
    cpu_percent: float
    memory_percent: float
    slots: list[tuple[int, float, int]]  # (slot, cpu percent, rss bytes) of each worker process


class Draining(_Message, tag=DRAINING):
    reason: str


Event = (
    Hello | Call | Result | Error | Cancel | Cancelled | Heartbeat | Progress | Log | Request | Response
    | Shutdown | Goodbye
)
NodeEvent = (
    NodeHello | Challenge | Auth | Welcome | SlotCall | SlotCancel | Abort | StopSlot | Bye | SlotUp | SlotDown
    | Cancelled | NodeHeartbeat | Draining | Result | Error | Progress | Log | Request | Response
)
Message = Event | NodeEvent
# What each side accepts, by conversation and role, once the connection is open: the one
# table (a handshake accepts its own messages first, see wire.node).
ACCEPTS: dict[tuple[str, str], tuple[type[Message], ...]] = {
    ("pipe", "kernel"): (Hello, Result, Error, Cancelled, Heartbeat, Progress, Log, Request, Goodbye),
    ("pipe", "worker"): (Call, Cancel, Heartbeat, Shutdown, Response),
    ("node", "kernel"): (Result, Error, SlotUp, SlotDown, Cancelled, NodeHeartbeat, Draining, Progress, Log, Request),
    ("node", "node"): (SlotCall, SlotCancel, Abort, StopSlot, Bye, Response),
}
TYPES: dict[int, type[Message]] = {
    HELLO: Hello, CALL: Call, RESULT: Result, ERROR: Error, CANCEL: Cancel, HEARTBEAT: Heartbeat,
    PROGRESS: Progress, LOG: Log, REQUEST: Request, RESPONSE: Response, SHUTDOWN: Shutdown, GOODBYE: Goodbye,
    NODE_HELLO: NodeHello, CHALLENGE: Challenge, AUTH: Auth, WELCOME: Welcome, SLOT_CALL: SlotCall,
    SLOT_CANCEL: SlotCancel, ABORT: Abort, STOP_SLOT: StopSlot, BYE: Bye, SLOT_UP: SlotUp, SLOT_DOWN: SlotDown,
    CANCELLED: Cancelled, NODE_HEARTBEAT: NodeHeartbeat, DRAINING: Draining,
}

_LEN = struct.Struct(">I")
_encode = msgspec.msgpack.Encoder().encode


def encode(msg: Message) -> bytes:
    """``msg``'s msgpack bytes, unframed (one websocket message carries them as they are)."""
    return _encode(msg)


def frame(msg: Message) -> bytes:
    """One length-prefixed frame for ``msg``, for byte streams."""
    body = _encode(msg)
    return _LEN.pack(len(body)) + body


def decoder(types: tuple[type[Message], ...]) -> msgspec.msgpack.Decoder[Any]:
    """A decoder of exactly these message types (what one side receives in one state)."""
    return msgspec.msgpack.Decoder(Union[types])  # noqa: UP007  # a Union built from a tuple at run time


def explain(data: bytes | memoryview | object, exc: msgspec.ValidationError, accepted: tuple[type[Message], ...],
            receiver: str) -> str:
    """What is wrong with a message that is msgpack but not one ``receiver`` accepts
    (``data``: its bytes, or the value already unpacked)."""
    if isinstance(data, bytes | memoryview):
        try:
            data = msgspec.msgpack.decode(data)
        except msgspec.DecodeError as undecodable:
            return f"undecodable frame: {undecodable}"
    if not isinstance(data, list) or not data or type(data[0]) is not int:
        return "a message is a msgpack array starting with its type"
    cls = TYPES.get(data[0])
    if cls is None:
        return f"unknown message type {data[0]}"
    name = cls.__name__
    if cls not in accepted:
        return f"{name} is not a message a {receiver} receives"
    required = sum(1 for f in msgspec.structs.fields(cls) if f.required)
    if not required <= len(data) - 1 <= len(cls.__struct_fields__):
        return f"{name} has {len(cls.__struct_fields__)} fields, got {len(data) - 1}"
    return f"{name}: {exc}"


class Connection:
    """One end of a kernel-worker conversation, without I/O.

    Feed received bytes to :meth:`receive_data` and act on the events it returns;
    write the bytes :meth:`send` returns. ``role`` is ``"kernel"`` or ``"worker"``:
    each side accepts only the messages meant for it, and the kernel side accepts
    nothing before a HELLO of the right version. ``peer`` names the other end in
    errors (it becomes the worker id a HELLO announces).
    """

    def __init__(
        self, role: str, *, max_frame: int = PIPE_MAX_FRAME, framed: bool = True, peer: str = "",
        keep_answers: bool = False,
    ) -> None:
        if role not in ("kernel", "worker"):
            raise ValueError(f"role must be 'kernel' or 'worker', not {role!r}")
        self.role = role
        self.max_frame = max_frame
        self.framed = framed
        self.peer_name = peer
        self._accepts = ACCEPTS["pipe", role]
        self._decode = decoder(self._accepts).decode
        self.peer: Hello | None = None if role == "kernel" else Hello(PROTOCOL_VERSION, "", 0, "", {})
        self._buf = bytearray()
        # With keep_answers, each RESULT and ERROR frame's bytes, by call id, for a relay that
        # forwards them as they came (a node agent): take them with answer_frame().
        self._answers: dict[int, bytes] | None = {} if keep_answers else None

    def _error(self, message: str) -> ProtocolError:
        return ProtocolError(message, self.peer_name)

    # -- receiving ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Events decoded from ``data`` plus what earlier calls left buffered.

        :raises ProtocolError: a frame over ``max_frame``, undecodable bytes, an unknown
            or misdirected message, a field of the wrong type, or a missing or
            mismatched HELLO. The connection is then unusable: drop the peer.
        """
        if not self.framed:
            return [self._event(data)]
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 4:
                (size,) = _LEN.unpack_from(buf, pos)
                if size > self.max_frame:
                    raise self._error(f"frame of {size} bytes exceeds the limit of {self.max_frame}")
                if end - pos - 4 < size:
                    break
                if self._answers is None:
                    events.append(self._event(view[pos + 4 : pos + 4 + size]))
                else:
                    self._keep(view[pos + 4 : pos + 4 + size], events)
                pos += 4 + size
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return events

    def _keep(self, body: memoryview, events: list[Event]) -> None:
        """Decode ``body`` into ``events``, keeping its bytes if it is an answer."""
        try:
            event = self._event(body)
            events.append(event)
            if type(event) is Result or type(event) is Error:
                self._answers[event.call_id] = bytes(body)  # type: ignore[index]  # set when keeping
        finally:
            body.release()  # the buffer behind it is resized once the frames are read

    def answer_frame(self, call_id: int) -> bytes | None:
        """The RESULT or ERROR frame received for ``call_id`` as it came (``keep_answers``),
        once: a relay forwards it without encoding it again."""
        return self._answers.pop(call_id, None) if self._answers is not None else None

    def pending(self) -> int:
        """Bytes still missing from the frame being received (0 between frames)."""
        buf = self._buf
        if len(buf) < 4:
            return 0
        size: int = _LEN.unpack_from(buf, 0)[0]
        return max(0, size + 4 - len(buf))

    def _event(self, frame: bytes | memoryview) -> Event:
        try:
            event: Event = self._decode(frame)
        except msgspec.ValidationError as exc:  # (a DecodeError too: first)
            raise self._error(explain(frame, exc, self._accepts, self.role)) from None
        except msgspec.DecodeError as exc:
            raise self._error(f"undecodable frame: {exc}") from None
        if self.peer is None:
            if type(event) is not Hello:
                raise self._error(f"expected HELLO first, got {type(event).__name__}")
            if event.version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"worker {event.worker_id!r} speaks wire version {event.version}; this kernel speaks "
                    f"{PROTOCOL_VERSION}: the worker's Python has another release of microkernel-em",
                    self.peer_name, CLOSE_VERSION)
            self.peer = event
            self.peer_name = self.peer_name or event.worker_id
        return event

    # -- sending --------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes that carry ``event`` to the peer."""
        return frame(event) if self.framed else _encode(event)
