"""The kernel-node conversation, sans I/O: handshake, mutual HMAC authentication, and
the messages that drive a remote node's worker slots.

Bytes in, events out; messages in, bytes out. Each transport message (one websocket
binary message) carries one or more msgpack arrays ``[type, *fields]`` back to back,
so many calls in flight cost one transport message, not one each. No I/O, no event
loop: tests feed bytes.

Handshake (the node dials out; nothing is unpickled before it completes)::

    node   -> kernel  NODE_HELLO (version, node id, node nonce, info)
    kernel -> node    CHALLENGE (kernel nonce)
    node   -> kernel  AUTH (HMAC(token, "node" | kernel nonce | node nonce | node id))
    kernel -> node    WELCOME (session, HMAC(token, "kernel" | node nonce | kernel nonce | node id),
                               heartbeat interval, frame limit, service packages)

The service packages (synthetic package name -> folder, see :mod:`kernel.packages`)
let a node that sees the kernel's service folders at the same paths (the same
machine, a shared file system) import service classes by reference.

Both nonces are fresh per connection, so a recorded AUTH is worthless in another
session, and the WELCOME proves to the node that the kernel holds the token too
(the node unpickles what the kernel sends). The token itself never crosses the wire.

After it::

    kernel -> node    CALL (slot, call id, kind, payload, soft timeout), CANCEL (slot, call id),
                      ABORT (slot, call id, reason), STOP_SLOT (slot, replace), BYE (reason),
                      RESPONSE (request id, ok, payload)
    node   -> kernel  SLOT_UP (slot, pid), SLOT_DOWN (slot, reason, exit code),
                      RESULT / ERROR (as on pipes), CANCELLED (call id),
                      HEARTBEAT (cpu %, memory %, [[slot, cpu %, rss], ...]), DRAINING (reason),
                      PROGRESS / LOG / REQUEST (from a running call, as on pipes)

Close codes (websocket close frames) a refused or broken connection gets:

======  =====================================================================
1000    normal: the node drained and left, or the kernel said BYE
1001    the kernel is shutting down
1003    a text frame (only binary frames are accepted)
1009    a message over the frame limit
4000    protocol error: not msgpack, nested too deep, unknown or misplaced
        message, wrong fields
4001    authentication failed (no or wrong token, or a replayed AUTH)
4002    no authentication within the deadline
4003    unsupported protocol version
4004    a node with this id is already connected
4005    a result for a call that was not assigned to this node
4006    heartbeats stopped: the node was declared failed
======  =====================================================================
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any

import msgpack

from .protocol import ERROR as ERROR
from .protocol import LOG as LOG
from .protocol import PROGRESS as PROGRESS
from .protocol import REQUEST as REQUEST
from .protocol import RESPONSE as RESPONSE
from .protocol import RESULT as RESULT
from .protocol import ProtocolError

NODE_PROTOCOL_VERSION = 1
HANDSHAKE_MAX_FRAME = 16 * 1024  # what an unauthenticated peer may send in one message
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

# Message types (RESULT, ERROR, PROGRESS, LOG, REQUEST and RESPONSE are the pipe protocol's).
NODE_HELLO, CHALLENGE, AUTH, WELCOME = 20, 21, 22, 23
CALL, CANCEL, ABORT, STOP_SLOT, BYE = 24, 25, 26, 27, 28
SLOT_UP, SLOT_DOWN, CANCELLED, HEARTBEAT, DRAINING = 30, 31, 32, 33, 34

# Close codes (see the module docstring).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_TEXT, CLOSE_TOO_BIG = 1000, 1001, 1003, 1009
CLOSE_PROTOCOL, CLOSE_AUTH, CLOSE_AUTH_TIMEOUT, CLOSE_VERSION = 4000, 4001, 4002, 4003
CLOSE_DUPLICATE, CLOSE_NOT_ASSIGNED, CLOSE_HEARTBEAT = 4004, 4005, 4006

# message type -> (name, number of fields)
_SHAPES: dict[int, tuple[str, int]] = {
    NODE_HELLO: ("NODE_HELLO", 4), CHALLENGE: ("CHALLENGE", 1), AUTH: ("AUTH", 1), WELCOME: ("WELCOME", 5),
    CALL: ("CALL", 5), CANCEL: ("CANCEL", 2), ABORT: ("ABORT", 3), STOP_SLOT: ("STOP_SLOT", 2), BYE: ("BYE", 1),
    SLOT_UP: ("SLOT_UP", 2), SLOT_DOWN: ("SLOT_DOWN", 3), RESULT: ("RESULT", 2), ERROR: ("ERROR", 5),
    CANCELLED: ("CANCELLED", 1), HEARTBEAT: ("HEARTBEAT", 3), DRAINING: ("DRAINING", 1),
    PROGRESS: ("PROGRESS", 3), LOG: ("LOG", 4), REQUEST: ("REQUEST", 4), RESPONSE: ("RESPONSE", 3),
}
KERNEL_RECEIVES = frozenset({RESULT, ERROR, SLOT_UP, SLOT_DOWN, CANCELLED, HEARTBEAT, DRAINING, PROGRESS, LOG,
                             REQUEST})
NODE_RECEIVES = frozenset({CALL, CANCEL, ABORT, STOP_SLOT, BYE, RESPONSE})
_NONCE = 32


class Refused(ProtocolError):
    """The peer must be disconnected with ``code`` and ``reason`` (a close code above)."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{reason} (close code {code})")


def proof(token: bytes, side: bytes, first: bytes, second: bytes, node_id: str) -> bytes:
    """The HMAC-SHA256 one side sends to show it holds ``token``."""
    return hmac.new(token, b"\0".join((side, first, second, node_id.encode())), hashlib.sha256).digest()


Message = list[Any]  # [type, *fields], shape-checked


class NodeLink:
    """One end of a kernel-node connection, without I/O.

    ``role`` is ``"kernel"`` or ``"node"``. Feed each received transport message to
    :meth:`receive`; it returns the messages for the caller to act on (handshake
    messages are handled here and not returned, except the node's hello, which the
    kernel returns once authenticated as ``[NODE_HELLO, ...]``), and raises
    :class:`Refused` with the close code to use. Send what :meth:`outgoing` returns.
    """

    def __init__(
        self, role: str, token: bytes, *, node_id: str = "", info: dict[str, Any] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME, nonce: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if role not in ("kernel", "node"):
            raise ValueError(f"role must be 'kernel' or 'node', not {role!r}")
        if not token:
            raise ValueError("the token is empty")
        self.role = role
        self.max_frame = max_frame
        self.node_id = node_id
        self.info: dict[str, Any] = info or {}
        self.session = ""
        self.heartbeat_interval = 0.0
        self.packages: dict[str, str] = {}
        self.state = "hello"  # kernel: hello -> auth -> ready -> open; node: hello -> welcome -> open
        self._token = token
        self._nonce = nonce(_NONCE)
        self._their_nonce = b""
        self._hello: Message | None = None
        self._out: list[bytes] = []
        self._accepts = KERNEL_RECEIVES if role == "kernel" else NODE_RECEIVES

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    # -- sending ----------------------------------------------------------------------

    def outgoing(self) -> bytes:
        """Everything queued for the peer, as one transport message (b"" if nothing)."""
        out, self._out = self._out, []
        return b"".join(out)

    @staticmethod
    def pack(*msg: Any) -> bytes:
        """One message's bytes; several may be concatenated into one transport message."""
        data: bytes = msgpack.packb(msg, use_bin_type=True)
        return data

    def hello(self) -> bytes:
        """The node's first message."""
        assert self.role == "node"
        return self.pack(NODE_HELLO, NODE_PROTOCOL_VERSION, self.node_id, self._nonce, self.info)

    def welcome(
        self, session: str, heartbeat_interval: float, max_frame: int, packages: dict[str, str] | None = None
    ) -> bytes:
        """Kernel: admit an authenticated node (after checking, e.g., that its id is free)."""
        assert self.role == "kernel" and self.state == "ready"
        self.state = "open"
        self.session = session
        self.max_frame = max_frame
        mine = proof(self._token, b"kernel", self._their_nonce, self._nonce, self.node_id)
        return self.pack(WELCOME, session, mine, heartbeat_interval, max_frame, packages or {})

    # -- receiving --------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Message]:
        """The messages in one transport message, checked for this role and state."""
        limit = self.max_frame if self.is_open else HANDSHAKE_MAX_FRAME
        if len(data) > limit:
            raise Refused(CLOSE_TOO_BIG, f"a message of {len(data)} bytes exceeds the limit of {limit}")
        try:
            messages = [self._check(msgpack.unpackb(data, raw=False, use_list=True))]  # one: the usual case
        except Refused:
            raise
        except Exception:  # several batched in one turn, or bad bytes, which this path names
            messages = self._receive_many(data, limit)
        if not self.is_open:
            return self._handshake(messages)
        return messages

    def _receive_many(self, data: bytes, limit: int) -> list[Message]:
        unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=max(limit, 1))
        unpacker.feed(data)
        messages: list[Message] = []
        end = 0
        try:
            for msg in unpacker:
                messages.append(self._check(msg))
                end = unpacker.tell()
        except Refused:
            raise
        except msgpack.StackError:
            raise Refused(CLOSE_PROTOCOL, "msgpack nested too deep") from None
        except Exception as exc:
            raise Refused(CLOSE_PROTOCOL, f"not a msgpack message: {type(exc).__name__}: {exc}") from None
        if end != len(data):
            raise Refused(CLOSE_PROTOCOL, "a message was cut short")
        return messages

    def _check(self, msg: Any) -> Message:
        if not isinstance(msg, list) or not msg or not isinstance(msg[0], int):
            raise Refused(CLOSE_PROTOCOL, "a message is a msgpack array starting with its type")
        shape = _SHAPES.get(msg[0])
        if shape is None:
            raise Refused(CLOSE_PROTOCOL, f"unknown message type {msg[0]}")
        name, fields = shape
        if len(msg) - 1 != fields:
            raise Refused(CLOSE_PROTOCOL, f"{name} has {fields} fields, got {len(msg) - 1}")
        if self.is_open and msg[0] not in self._accepts:
            raise Refused(CLOSE_PROTOCOL, f"{name} is not a message a {self.role} receives")
        return msg

    def _handshake(self, messages: list[Message]) -> list[Message]:
        if len(messages) != 1:
            raise Refused(CLOSE_PROTOCOL, f"expected one handshake message, got {len(messages)}")
        msg = messages[0]
        if self.role == "kernel":
            return self._kernel_handshake(msg)
        return self._node_handshake(msg)

    def _kernel_handshake(self, msg: Message) -> list[Message]:
        if self.state == "hello":
            if msg[0] != NODE_HELLO:
                raise Refused(CLOSE_PROTOCOL, f"expected NODE_HELLO first, got {_SHAPES[msg[0]][0]}")
            _, version, node_id, nonce, info = msg
            if version != NODE_PROTOCOL_VERSION:
                raise Refused(CLOSE_VERSION, f"node speaks protocol version {version!r}; this kernel speaks "
                                             f"{NODE_PROTOCOL_VERSION}")
            if not isinstance(node_id, str) or not 0 < len(node_id) <= 128 or not node_id.isprintable():
                raise Refused(CLOSE_PROTOCOL, "NODE_HELLO: the node id must be 1-128 printable characters")
            if not isinstance(nonce, bytes) or len(nonce) < 16 or not isinstance(info, dict):
                raise Refused(CLOSE_PROTOCOL, "NODE_HELLO: bad nonce or info")
            self.node_id, self._their_nonce, self.info, self._hello = node_id, nonce, info, msg
            self.state = "auth"
            self._out.append(self.pack(CHALLENGE, self._nonce))
            return []
        if self.state == "auth":
            if msg[0] != AUTH:
                raise Refused(CLOSE_AUTH, f"expected AUTH, got {_SHAPES[msg[0]][0]}")
            expected = proof(self._token, b"node", self._nonce, self._their_nonce, self.node_id)
            mac = msg[1]
            if not isinstance(mac, bytes) or not hmac.compare_digest(mac, expected):
                raise Refused(CLOSE_AUTH, "authentication failed: wrong or missing token")
            self.state = "ready"
            assert self._hello is not None
            return [self._hello]
        raise Refused(CLOSE_PROTOCOL, f"{_SHAPES[msg[0]][0]} before the node was admitted")

    def _node_handshake(self, msg: Message) -> list[Message]:
        if self.state == "hello":
            if msg[0] != CHALLENGE or not isinstance(msg[1], bytes) or len(msg[1]) < 16:
                raise Refused(CLOSE_PROTOCOL, "expected CHALLENGE from the kernel")
            self._their_nonce = msg[1]
            self.state = "welcome"
            self._out.append(self.pack(AUTH, proof(self._token, b"node", msg[1], self._nonce, self.node_id)))
            return []
        if self.state == "welcome":
            if msg[0] != WELCOME:
                raise Refused(CLOSE_PROTOCOL, f"expected WELCOME, got {_SHAPES[msg[0]][0]}")
            _, session, mac, interval, max_frame, packages = msg
            expected = proof(self._token, b"kernel", self._nonce, self._their_nonce, self.node_id)
            if not isinstance(mac, bytes) or not hmac.compare_digest(mac, expected):
                raise Refused(CLOSE_AUTH, "the kernel failed to prove it holds the token")
            self.session, self.heartbeat_interval = str(session), float(interval)
            self.max_frame = int(max_frame)
            if isinstance(packages, dict):
                self.packages = {str(k): str(v) for k, v in packages.items()}
            self.state = "open"
            return []
        raise Refused(CLOSE_PROTOCOL, "handshake message after the handshake")
