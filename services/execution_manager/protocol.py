"""The wire protocol between the kernel and its workers, sans I/O.

Bytes in, events out; calls in, bytes out. This module does no I/O and imports no
event loop: the pipe transport of local workers and (later) the websocket transport of
remote nodes drive the same :class:`Connection`.

Framing: each message is a msgpack array ``[type, *fields]``. On byte streams (pipes,
sockets) it is prefixed by its length as a 4-byte big-endian integer; on message
transports (one websocket binary message each) the prefix is left out. Payloads of
Python objects are pickled bytes inside the envelope; the envelope itself is plain
msgpack, so a peer can be validated before anything is unpickled.

Conversation::

    worker -> kernel   HELLO (protocol version, worker id, pid, python version, info)
    kernel -> worker   CALL (call id, kind, payload, soft timeout) ... CANCEL, SHUTDOWN,
                       RESPONSE
    worker -> kernel   RESULT | ERROR (call id, ...), HEARTBEAT, PROGRESS, LOG, REQUEST,
                       GOODBYE

Call ids are attempt ids: unique per attempt, so a late answer to an attempt the
kernel gave up is recognised and dropped.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 512 * 1024 * 1024  # pipes between trusted local processes

# Message types.
HELLO, CALL, RESULT, ERROR, CANCEL, HEARTBEAT = 0, 1, 2, 3, 4, 5
PROGRESS, LOG, REQUEST, RESPONSE, SHUTDOWN, GOODBYE = 6, 7, 8, 9, 10, 11

# Kinds of CALL.
CALL_FN = 0  # payload: pickle((fn, args, kwargs))
CALL_METHOD = 1  # payload: pickle((instance, method, args, kwargs)), run on a replica
PIN = 2  # payload: pickle((key, instance)); the instance stays on the worker
CALL_PINNED = 3  # payload: pickle((key, method, args, kwargs))
UNPIN = 4  # payload: pickle(key); the result is the instance, state and all


class ProtocolError(Exception):
    """The peer broke the protocol: bad framing, unknown message, wrong version."""


class Hello(NamedTuple):
    version: int
    worker_id: str
    pid: int
    python: str
    info: dict[str, Any]


class Call(NamedTuple):
    call_id: int
    kind: int
    payload: bytes
    soft_timeout: float = 0.0  # seconds after which the worker raises inside the call; 0: none


class Result(NamedTuple):
    call_id: int
    payload: bytes


class Error(NamedTuple):
    call_id: int
    type_name: str
    message: str
    traceback: str
    exception: bytes | None  # the pickled exception, when it pickles


class Cancel(NamedTuple):
    call_id: int


class Heartbeat(NamedTuple):
    cpu_percent: float
    rss: int
    running: int


class Progress(NamedTuple):
    call_id: int
    fraction: float
    message: str


class Log(NamedTuple):
    call_id: int
    level: str
    message: str
    fields: dict[str, Any]


class Request(NamedTuple):
    request_id: int
    call_id: int
    route: str
    payload: bytes


class Response(NamedTuple):
    request_id: int
    ok: bool
    payload: bytes


class Shutdown(NamedTuple):
    drain: bool


class Goodbye(NamedTuple):
    reason: str


Event = (
    Hello | Call | Result | Error | Cancel | Heartbeat | Progress | Log | Request | Response
    | Shutdown | Goodbye
)

_TYPES: dict[int, type[Any]] = {
    HELLO: Hello, CALL: Call, RESULT: Result, ERROR: Error, CANCEL: Cancel,
    HEARTBEAT: Heartbeat, PROGRESS: Progress, LOG: Log, REQUEST: Request,
    RESPONSE: Response, SHUTDOWN: Shutdown, GOODBYE: Goodbye,
}
_CODES = {cls: code for code, cls in _TYPES.items()}
KERNEL_RECEIVES = frozenset({HELLO, RESULT, ERROR, HEARTBEAT, PROGRESS, LOG, REQUEST, GOODBYE})
WORKER_RECEIVES = frozenset({CALL, CANCEL, SHUTDOWN, RESPONSE})

_LEN = struct.Struct(">I")
_packb = msgpack.packb
_unpackb = msgpack.unpackb


def pack(msg: tuple[Any, ...]) -> bytes:
    """One length-prefixed frame for ``msg`` (a ``(type, *fields)`` tuple)."""
    body: bytes = _packb(msg, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class Connection:
    """One end of a kernel-worker conversation, without I/O.

    Feed received bytes to :meth:`receive_data` and act on the events it returns;
    write the bytes the ``send_*`` methods return. ``role`` is ``"kernel"`` or
    ``"worker"``: each side accepts only the messages meant for it, and the kernel
    side accepts nothing before a HELLO of the right version.
    """

    def __init__(
        self, role: str, *, max_frame: int = DEFAULT_MAX_FRAME, framed: bool = True
    ) -> None:
        if role not in ("kernel", "worker"):
            raise ValueError(f"role must be 'kernel' or 'worker', not {role!r}")
        self.role = role
        self.max_frame = max_frame
        self.framed = framed
        self._accepts = KERNEL_RECEIVES if role == "kernel" else WORKER_RECEIVES
        self.peer: Hello | None = None if role == "kernel" else Hello(PROTOCOL_VERSION, "", 0, "", {})
        self._buf = bytearray()

    # -- receiving ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Events decoded from ``data`` plus what earlier calls left buffered.

        Raises :class:`ProtocolError` on a frame over ``max_frame``, undecodable
        bytes, an unknown or misdirected message, or a missing or mismatched HELLO.
        """
        if not self.framed:
            return [self._decode(data)]
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
                    raise ProtocolError(f"frame of {size} bytes exceeds the limit of {self.max_frame}")
                if end - pos - 4 < size:
                    break
                events.append(self._decode(view[pos + 4 : pos + 4 + size]))
                pos += 4 + size
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return events

    def pending(self) -> int:
        """Bytes still missing from the frame being received (0 between frames)."""
        buf = self._buf
        if len(buf) < 4:
            return 0
        size: int = _LEN.unpack_from(buf, 0)[0]
        return max(0, size + 4 - len(buf))

    def _decode(self, frame: bytes | memoryview) -> Event:
        try:
            msg = _unpackb(frame, use_list=True, raw=False)
        except Exception as exc:
            raise ProtocolError(f"undecodable frame: {exc}") from None
        if not isinstance(msg, list) or not msg or not isinstance(msg[0], int):
            raise ProtocolError("a message is a msgpack array starting with its type")
        code = msg[0]
        cls = _TYPES.get(code)
        if cls is None:
            raise ProtocolError(f"unknown message type {code}")
        if code not in self._accepts:
            raise ProtocolError(f"{cls.__name__} is not a message a {self.role} receives")
        try:
            event: Event = cls._make(msg[1:])
        except TypeError:
            raise ProtocolError(
                f"{cls.__name__} has {len(cls._fields)} fields, got {len(msg) - 1}"
            ) from None
        if self.peer is None:
            if not isinstance(event, Hello):
                raise ProtocolError(f"expected HELLO first, got {cls.__name__}")
            if event.version != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"worker speaks protocol version {event.version}; this kernel speaks "
                    f"{PROTOCOL_VERSION}"
                )
            self.peer = event
        return event

    # -- sending --------------------------------------------------------------------

    def _frame(self, msg: tuple[Any, ...]) -> bytes:
        if self.framed:
            return pack(msg)
        data: bytes = _packb(msg, use_bin_type=True)
        return data

    def send(self, event: Event) -> bytes:
        """The bytes that carry ``event`` to the peer."""
        return self._frame((_CODES[type(event)], *event))

    def send_call(self, call_id: int, kind: int, payload: bytes, soft_timeout: float = 0.0) -> bytes:
        return self._frame((CALL, call_id, kind, payload, soft_timeout))

    def send_result(self, call_id: int, payload: bytes) -> bytes:
        return self._frame((RESULT, call_id, payload))
