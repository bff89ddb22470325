"""The wire protocol's vocabulary, sans I/O: the messages, their codes, what each side
accepts in each state, the limits and the close codes.

The connection that speaks it (framing, limits, the accept table) is
:class:`~.connection.Connection`; its sides are in :mod:`.pipe` (a worker's pipe) and
:mod:`.node` (a node's websocket). This module does no I/O and imports no event loop.

Each message is a typed value (a msgspec ``Struct``) whose encoding is a msgpack array
``[type, *fields]``; ``type`` is the message's code in the one code table below. On
byte streams (pipes, sockets) a frame is prefixed by its length as a 4-byte big-endian
integer; on message transports (one websocket binary message each) the prefix is left
out. Payloads of Python objects are pickled bytes inside the envelope; the envelope is
plain msgpack and is decoded into the message's declared field types (an ``int`` is an
int, a payload is bytes) before anything is unpickled, so a peer that sends garbage
gets a :class:`ProtocolError` naming it, never a failure deep inside the kernel.

The conversations are described with their sides: a worker's pipe in :mod:`.pipe`, a
node's websocket in :mod:`.node`.
"""

from __future__ import annotations

import functools
import re
import struct
from enum import StrEnum
from typing import Any, Union

import msgspec

# Raised with each release whose messages or pickles differ (2: the execution manager's
# modules moved into folders; 3: a call carries its attempt number, and operators' messages
# reach pinned instances), so a peer of another
# one is refused before anything is unpickled. A different package version of the same
# wire version is admitted, with a warning, for rolling upgrades.
PROTOCOL_VERSION = 3
# The close codes every connection refuses with (the node conversation adds its own, see
# ``wire.node``): a broken protocol, another wire version, a frame over the limit (RFC 6455's).
CLOSE_PROTOCOL, CLOSE_VERSION, CLOSE_TOO_BIG = 4000, 4003, 1009
# Frame limits, one per conversation, all here (a connection is given its own).
PIPE_MAX_FRAME = 512 * 1024 * 1024  # pipes between trusted local processes
NODE_MAX_FRAME = 64 * 1024 * 1024  # a node's messages once admitted (custom.nodes.maxFrame's default)
HANDSHAKE_MAX_FRAME = 16 * 1024  # what an unauthenticated node may send in one message

# The code table: every message type, of both conversations. A worker's pipe uses 0-11;
# a node's connection (``wire.node``) uses 20-34 and the call traffic of the pipe's
# (RESULT, ERROR, PROGRESS, LOG, REQUEST, RESPONSE), which travels unchanged.
HELLO, CALL, RESULT, ERROR, CANCEL, HEARTBEAT = 0, 1, 2, 3, 4, 5
PROGRESS, LOG, REQUEST, RESPONSE, SHUTDOWN, GOODBYE = 6, 7, 8, 9, 10, 11
TELL, TOLD = 12, 13
NODE_HELLO, CHALLENGE, AUTH, WELCOME = 20, 21, 22, 23
SLOT_CALL, SLOT_CANCEL, ABORT, STOP_SLOT, BYE = 24, 25, 26, 27, 28
SLOT_UP, SLOT_DOWN, CANCELLED, NODE_HEARTBEAT, DRAINING = 30, 31, 32, 33, 34
SLOT_TELL, SLOT_TOLD = 35, 36

# Kinds of CALL.
CALL_FN = 0  # payload: pickle((fn, args, kwargs))
CALL_METHOD = 1  # payload: pickle((instance, method, args, kwargs)), run on a replica
PIN = 2  # payload: pickle((key, instance)); the instance stays on the worker
CALL_PINNED = 3  # payload: pickle((key, method, args, kwargs))
UNPIN = 4  # payload: pickle(key); the result is the instance, state and all


class ProtocolError(Exception):
    """The peer broke the protocol (bad framing, an unknown or misplaced message, wrong
    fields, another version, a failed proof) and must be disconnected. ``reason`` says
    what is wrong; ``peer`` names the peer (a worker id or a node) when the connection
    knows; ``code`` is the close code to refuse it with (:data:`CLOSE_VERSION` for another
    wire version, :data:`CLOSE_TOO_BIG`, or one of ``wire.node``'s)."""

    def __init__(self, reason: str, peer: str = "", code: int = CLOSE_PROTOCOL) -> None:
        self.reason = reason
        self.peer = peer
        self.code = code
        super().__init__(f"{peer}: {reason}" if peer else reason)


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
    attempt: int = 1  # which try at the call this is (kernel.task.current().attempt)


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


class Tell(_Message, tag=TELL):
    """An operator's message (JSON) for the instances pinned on the worker."""

    request_id: int
    payload: bytes


class Told(_Message, tag=TOLD):
    """Each pinned instance's answer to a TELL, in pin order: (ok, its JSON reply, or why not)."""

    request_id: int
    replies: list[tuple[bool, str]]


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
    attempt: int = 1


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


class SlotTell(_Message, tag=SLOT_TELL):
    slot: int
    request_id: int
    payload: bytes


class SlotTold(_Message, tag=SLOT_TOLD):
    slot: int
    request_id: int
    replies: list[tuple[bool, str]]


Event = (
    Hello | Call | Result | Error | Cancel | Cancelled | Heartbeat | Progress | Log | Request | Response
    | Shutdown | Goodbye | Tell | Told
)
NodeEvent = (
    NodeHello | Challenge | Auth | Welcome | SlotCall | SlotCancel | Abort | StopSlot | Bye | SlotUp | SlotDown
    | Cancelled | NodeHeartbeat | Draining | Result | Error | Progress | Log | Request | Response | SlotTell | SlotTold
)
Message = Event | NodeEvent


class State(StrEnum):
    """Where a connection is: the steps of its handshake, then open."""

    HELLO = "hello"  # waiting for the peer's first message
    AUTH = "auth"  # the kernel of a node link: waiting for the node's proof
    READY = "ready"  # the kernel of a node link: the node proved itself, the kernel's welcome is next
    WELCOME = "welcome"  # a node: waiting for the kernel's welcome
    OPEN = "open"


# What each side accepts, by conversation, role and state: the one table. A side with a
# handshake starts in HELLO; a side absent from HELLO (a worker's end of its pipe) is open
# at once.
ACCEPTS: dict[tuple[str, str, State], tuple[type[Message], ...]] = {
    ("pipe", "kernel", State.HELLO): (Hello,),
    ("pipe", "kernel", State.OPEN): (Result, Error, Cancelled, Heartbeat, Progress, Log, Request, Goodbye, Told),
    ("pipe", "worker", State.OPEN): (Call, Cancel, Heartbeat, Shutdown, Response, Tell),
    ("node", "kernel", State.HELLO): (NodeHello,),
    ("node", "kernel", State.AUTH): (Auth,),
    ("node", "kernel", State.READY): (),
    ("node", "kernel", State.OPEN): (
        Result, Error, SlotUp, SlotDown, Cancelled, NodeHeartbeat, Draining, Progress, Log, Request, SlotTold),
    ("node", "node", State.HELLO): (Challenge,),
    ("node", "node", State.WELCOME): (Welcome,),
    ("node", "node", State.OPEN): (SlotCall, SlotCancel, Abort, StopSlot, Bye, Response, SlotTell),
}
TYPES: dict[int, type[Message]] = {
    HELLO: Hello, CALL: Call, RESULT: Result, ERROR: Error, CANCEL: Cancel, HEARTBEAT: Heartbeat,
    PROGRESS: Progress, LOG: Log, REQUEST: Request, RESPONSE: Response, SHUTDOWN: Shutdown, GOODBYE: Goodbye,
    NODE_HELLO: NodeHello, CHALLENGE: Challenge, AUTH: Auth, WELCOME: Welcome, SLOT_CALL: SlotCall,
    SLOT_CANCEL: SlotCancel, ABORT: Abort, STOP_SLOT: StopSlot, BYE: Bye, SLOT_UP: SlotUp, SLOT_DOWN: SlotDown,
    CANCELLED: Cancelled, NODE_HEARTBEAT: NodeHeartbeat, DRAINING: Draining,
    TELL: Tell, TOLD: Told, SLOT_TELL: SlotTell, SLOT_TOLD: SlotTold,
}

LENGTH = struct.Struct(">I")  # the prefix of a frame on a byte stream
_encode = msgspec.msgpack.Encoder().encode


def encode(msg: Message) -> bytes:
    """``msg``'s msgpack bytes, unframed (one websocket message carries them as they are)."""
    return _encode(msg)


def frame(msg: Message) -> bytes:
    """One length-prefixed frame for ``msg``, for byte streams."""
    body = _encode(msg)
    return LENGTH.pack(len(body)) + body


@functools.cache
def decoder(types: tuple[type[Message], ...]) -> msgspec.msgpack.Decoder[Any]:
    """A decoder of exactly these message types (what one side receives in one state)."""
    return msgspec.msgpack.Decoder(Union[types])  # noqa: UP007  # a Union built from a tuple at run time


def wire_name(cls: type[Message]) -> str:
    """A message's name in the code table (``NodeHello``: ``NODE_HELLO``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()


def explain(data: bytes | memoryview | object, exc: msgspec.ValidationError, accepted: tuple[type[Message], ...],
            receiver: str, earlier: tuple[type[Message], ...] = ()) -> str:
    """What is wrong with a message that is msgpack but not one ``receiver`` accepts
    (``data``: its bytes, or the value already unpacked; ``earlier``: what its handshake
    accepted)."""
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
        if cls in earlier:
            return f"{wire_name(cls)} after the handshake"
        return f"{name} is not a message a {receiver} receives"
    required = sum(1 for f in msgspec.structs.fields(cls) if f.required)
    if not required <= len(data) - 1 <= len(cls.__struct_fields__):
        return f"{name} has {len(cls.__struct_fields__)} fields, got {len(data) - 1}"
    return f"{name}: {exc}"
