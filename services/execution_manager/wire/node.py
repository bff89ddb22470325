"""The kernel-node conversation, sans I/O: handshake, mutual HMAC authentication, and
the messages that drive a remote node's worker slots.

Bytes in, messages out; messages in, bytes out. The messages are the typed values of
the one code table in :mod:`.protocol` (the call traffic, RESULT to RESPONSE, is the
pipe's own). Each transport message (one websocket binary message) carries one or
more of them back to back, so many calls in flight cost one transport message, not
one each; each is decoded into its declared field types, for the messages this side
accepts in this state only, before anything is unpickled. No I/O, no event loop:
tests feed bytes.

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

    kernel -> node    SLOT_CALL (slot, call id, kind, payload, soft timeout),
                      SLOT_CANCEL (slot, call id), ABORT (slot, call id, reason),
                      STOP_SLOT (slot, replace), BYE (reason), RESPONSE (request id, ok, payload)
    node   -> kernel  SLOT_UP (slot, pid), SLOT_DOWN (slot, reason, exit code),
                      RESULT / ERROR (as on pipes), CANCELLED (call id),
                      NODE_HEARTBEAT (cpu %, memory %, [[slot, cpu %, rss], ...]), DRAINING (reason),
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
4003    another wire version (another release), or another Python minor version
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
from enum import StrEnum
from typing import Any

import msgpack
import msgspec

from . import protocol as p
from .protocol import (
    CLOSE_PROTOCOL as CLOSE_PROTOCOL,
    CLOSE_VERSION as CLOSE_VERSION,
    HANDSHAKE_MAX_FRAME as HANDSHAKE_MAX_FRAME,
    NODE_MAX_FRAME,
    ProtocolError,
)

NODE_PROTOCOL_VERSION = 2  # raised with PROTOCOL_VERSION (see there)

# Close codes (see the module docstring).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_TEXT, CLOSE_TOO_BIG = 1000, 1001, 1003, 1009
CLOSE_AUTH, CLOSE_AUTH_TIMEOUT = 4001, 4002  # CLOSE_PROTOCOL (4000) and CLOSE_VERSION (4003): wire.protocol
CLOSE_DUPLICATE, CLOSE_NOT_ASSIGNED, CLOSE_HEARTBEAT = 4004, 4005, 4006
CLOSE_TRY_LATER = 1013  # too many connections waiting to authenticate (RFC 6455's "try again later")

# During the handshake every message of the node conversation decodes, so that the
# handshake can say what it expected instead (nothing is unpickled either way); once open,
# each side accepts what protocol.ACCEPTS says.
_HANDSHAKE: tuple[type[p.Message], ...] = tuple(
    dict.fromkeys((p.NodeHello, p.Challenge, p.Auth, p.Welcome, *p.ACCEPTS["node", "kernel"],
                   *p.ACCEPTS["node", "node"]))
)
_NONCE = 32


class Refused(ProtocolError):
    """The peer must be disconnected with ``code`` and ``reason`` (a close code above)."""

    def __init__(self, code: int, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{reason} (close code {code})", code=code)


def proof(token: bytes, side: bytes, first: bytes, second: bytes, node_id: str) -> bytes:
    """The HMAC-SHA256 one side sends to show it holds ``token``."""
    return hmac.new(token, b"\0".join((side, first, second, node_id.encode())), hashlib.sha256).digest()


class LinkState(StrEnum):
    """Where a link is in its handshake (kernel: hello, auth, ready, open; node: hello,
    welcome, open)."""

    HELLO = "hello"
    AUTH = "auth"
    READY = "ready"  # the kernel has checked the node's proof; its welcome is next
    WELCOME = "welcome"
    OPEN = "open"


class NodeLink:
    """One end of a kernel-node connection, without I/O.

    ``role`` is ``"kernel"`` or ``"node"``. Feed each received transport message to
    :meth:`receive`; it returns the messages for the caller to act on (handshake
    messages are handled here and not returned, except the node's hello, which the
    kernel returns once authenticated), and raises :class:`Refused` with the close
    code to use. Send what :meth:`outgoing` returns, and messages made with
    :func:`~.protocol.encode`.
    """

    def __init__(
        self, role: str, token: bytes, *, node_id: str = "", info: dict[str, Any] | None = None,
        max_frame: int = NODE_MAX_FRAME, nonce: Callable[[int], bytes] = os.urandom,
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
        self.state = LinkState.HELLO  # kernel: hello -> auth -> ready -> open; node: hello -> welcome -> open
        self._token = token
        self._nonce = nonce(_NONCE)
        self._their_nonce = b""
        self._hello: p.NodeHello | None = None
        self._out: list[bytes] = []
        self._open_types = p.ACCEPTS["node", role]
        self._types: tuple[type[p.Message], ...] = _HANDSHAKE
        self._decoder = p.decoder(self._types)

    @property
    def is_open(self) -> bool:
        return self.state is LinkState.OPEN

    def _opened(self) -> None:
        self.state = LinkState.OPEN
        self._types = tuple(self._open_types)
        self._decoder = p.decoder(self._types)

    # -- sending ----------------------------------------------------------------------

    def outgoing(self) -> bytes:
        """Everything queued for the peer, as one transport message (b"" if nothing)."""
        out, self._out = self._out, []
        return b"".join(out)

    def hello(self) -> bytes:
        """The node's first message."""
        assert self.role == "node"
        return p.encode(p.NodeHello(NODE_PROTOCOL_VERSION, self.node_id, self._nonce, self.info))

    def welcome(
        self, session: str, heartbeat_interval: float, max_frame: int, packages: dict[str, str] | None = None
    ) -> bytes:
        """Kernel: admit an authenticated node (after checking, e.g., that its id is free)."""
        assert self.role == "kernel" and self.state is LinkState.READY
        self._opened()
        self.session = session
        self.max_frame = max_frame
        mine = proof(self._token, b"kernel", self._their_nonce, self._nonce, self.node_id)
        return p.encode(p.Welcome(session, mine, heartbeat_interval, max_frame, packages or {}))

    # -- receiving --------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Any]:
        """The messages in one transport message, decoded and checked for this role and
        state (typed values of :mod:`.protocol`)."""
        limit = self.max_frame if self.is_open else HANDSHAKE_MAX_FRAME
        if len(data) > limit:
            raise Refused(CLOSE_TOO_BIG, f"a message of {len(data)} bytes exceeds the limit of {limit}")
        try:
            messages = [self._decoder.decode(data)]  # one: the usual case
        except msgspec.DecodeError:  # several batched in one turn, or bad input, which this path names
            messages = self._receive_many(data, limit)
        except RecursionError:  # msgspec's own depth limit, inside a field of type Any
            raise Refused(CLOSE_PROTOCOL, "msgpack nested too deep") from None
        if not self.is_open:
            return self._handshake(messages)
        return messages

    def _receive_many(self, data: bytes, limit: int) -> list[Any]:
        unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=max(limit, 1))
        unpacker.feed(data)
        messages: list[Any] = []
        end = 0
        union = self._decoder.type
        try:
            for raw in unpacker:
                try:
                    messages.append(msgspec.convert(raw, union))
                except msgspec.ValidationError as exc:
                    raise Refused(CLOSE_PROTOCOL, p.explain(raw, exc, self._types, self.role)) from None
                end = unpacker.tell()
        except Refused:
            raise
        except (msgpack.StackError, RecursionError):
            raise Refused(CLOSE_PROTOCOL, "msgpack nested too deep") from None
        except Exception as exc:
            raise Refused(CLOSE_PROTOCOL, f"not a msgpack message: {type(exc).__name__}: {exc}") from None
        if end != len(data):
            raise Refused(CLOSE_PROTOCOL, "a message was cut short")
        return messages

    def _handshake(self, messages: list[Any]) -> list[Any]:
        if len(messages) != 1:
            raise Refused(CLOSE_PROTOCOL, f"expected one handshake message, got {len(messages)}")
        msg = messages[0]
        if self.role == "kernel":
            return self._kernel_handshake(msg)
        return self._node_handshake(msg)

    def _kernel_handshake(self, msg: Any) -> list[Any]:
        if self.state is LinkState.HELLO:
            if type(msg) is not p.NodeHello:
                raise Refused(CLOSE_PROTOCOL, f"expected NODE_HELLO first, got {type(msg).__name__}")
            if not 0 < len(msg.node_id) <= 128 or not msg.node_id.isprintable():
                raise Refused(CLOSE_PROTOCOL, "NODE_HELLO: the node id must be 1-128 printable characters")
            self.node_id = msg.node_id  # named in the refusal's log line
            if msg.version != NODE_PROTOCOL_VERSION:
                raise Refused(CLOSE_VERSION, f"node speaks wire version {msg.version!r}; this kernel speaks "
                                             f"{NODE_PROTOCOL_VERSION}: run one release on both")
            if len(msg.nonce) < 16:
                raise Refused(CLOSE_PROTOCOL, "NODE_HELLO: bad nonce")
            self.node_id, self._their_nonce, self.info, self._hello = msg.node_id, msg.nonce, msg.info, msg
            self.state = LinkState.AUTH
            self._out.append(p.encode(p.Challenge(self._nonce)))
            return []
        if self.state is LinkState.AUTH:
            if type(msg) is not p.Auth:
                raise Refused(CLOSE_AUTH, f"expected AUTH, got {type(msg).__name__}")
            expected = proof(self._token, b"node", self._nonce, self._their_nonce, self.node_id)
            if not hmac.compare_digest(msg.proof, expected):
                raise Refused(CLOSE_AUTH, "authentication failed: wrong or missing token")
            self.state = LinkState.READY
            assert self._hello is not None
            return [self._hello]
        raise Refused(CLOSE_PROTOCOL, f"{type(msg).__name__} before the node was admitted")

    def _node_handshake(self, msg: Any) -> list[Any]:
        if self.state is LinkState.HELLO:
            if type(msg) is not p.Challenge or len(msg.nonce) < 16:
                raise Refused(CLOSE_PROTOCOL, "expected CHALLENGE from the kernel")
            self._their_nonce = msg.nonce
            self.state = LinkState.WELCOME
            self._out.append(p.encode(p.Auth(proof(self._token, b"node", msg.nonce, self._nonce, self.node_id))))
            return []
        if self.state is LinkState.WELCOME:
            if type(msg) is not p.Welcome:
                raise Refused(CLOSE_PROTOCOL, f"expected WELCOME, got {type(msg).__name__}")
            expected = proof(self._token, b"kernel", self._nonce, self._their_nonce, self.node_id)
            if not hmac.compare_digest(msg.proof, expected):
                raise Refused(CLOSE_AUTH, "the kernel failed to prove it holds the token")
            self.session, self.heartbeat_interval = msg.session, msg.heartbeat_interval
            self.max_frame = msg.max_frame
            self.packages = dict(msg.packages)
            self._opened()
            return []
        raise Refused(CLOSE_PROTOCOL, "handshake message after the handshake")
