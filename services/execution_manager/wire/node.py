"""The kernel-node conversation, sans I/O: handshake, mutual HMAC authentication, and
the messages that drive a remote node's worker slots: the two sides of a node link.

Bytes in, messages out; messages in, bytes out (:class:`~.connection.Connection`, message
framing: one websocket binary message carries one or more messages back to back). The
messages are the typed values of the one code table in :mod:`.protocol` (the call
traffic, RESULT to RESPONSE, is the pipe's own). No I/O, no event loop: tests feed bytes.

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
from typing import Any

from .connection import Connection, Framing
from .protocol import (
    CLOSE_PROTOCOL as CLOSE_PROTOCOL,
    CLOSE_TOO_BIG as CLOSE_TOO_BIG,
    CLOSE_VERSION as CLOSE_VERSION,
    HANDSHAKE_MAX_FRAME as HANDSHAKE_MAX_FRAME,
    NODE_MAX_FRAME,
    Auth,
    Challenge,
    NodeHello,
    State,
    Welcome,
)

NODE_PROTOCOL_VERSION = 3  # raised with PROTOCOL_VERSION (see there)

# Close codes (see the module docstring; 4000, 4003 and 1009 are every connection's: wire.protocol).
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_TEXT = 1000, 1001, 1003
CLOSE_AUTH, CLOSE_AUTH_TIMEOUT = 4001, 4002
CLOSE_DUPLICATE, CLOSE_NOT_ASSIGNED, CLOSE_HEARTBEAT = 4004, 4005, 4006
CLOSE_TRY_LATER = 1013  # too many connections waiting to authenticate (RFC 6455's "try again later")
_NONCE = 32


def proof(token: bytes, side: bytes, first: bytes, second: bytes, node_id: str) -> bytes:
    """The HMAC-SHA256 one side sends to show it holds ``token``."""
    return hmac.new(token, b"\0".join((side, first, second, node_id.encode())), hashlib.sha256).digest()


class _NodeLink(Connection):
    """What both sides of a node link share: the token, both nonces, message framing, the
    handshake's own frame limit (an unauthenticated peer may send 16 KiB at most)."""

    conversation = "node"

    def __init__(
        self, token: bytes, *, node_id: str = "", info: dict[str, Any] | None = None,
        max_frame: int = NODE_MAX_FRAME, nonce: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not token:
            raise ValueError("the token is empty")
        super().__init__(max_frame=max_frame, handshake_max_frame=HANDSHAKE_MAX_FRAME, framing=Framing.MESSAGE)
        self.node_id = node_id
        self.info: dict[str, Any] = info or {}
        self.session = ""
        self.heartbeat_interval = 0.0
        self.packages: dict[str, str] = {}
        self._token = token
        self._nonce = nonce(_NONCE)
        self._their_nonce = b""

    def _open_with(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._set_state(State.OPEN)


class NodeKernelSide(_NodeLink):
    """The kernel's end of a node link: challenges the node's hello, checks its proof,
    then returns the hello (the node is authenticated) and waits in ``State.READY`` for
    the kernel to check the rest (e.g. that the id is free) and :meth:`welcome` it."""

    role = "kernel"
    refusal_codes = {State.AUTH: CLOSE_AUTH}
    peer_hello: NodeHello | None = None

    def welcome(
        self, session: str, heartbeat_interval: float, max_frame: int, packages: dict[str, str] | None = None
    ) -> bytes:
        """Admit the authenticated node: the message to send it."""
        assert self.state is State.READY
        self.session = session
        self._open_with(max_frame)
        mine = proof(self._token, b"kernel", self._their_nonce, self._nonce, self.node_id)
        return self.send(Welcome(session, mine, heartbeat_interval, max_frame, packages or {}))

    def _handshake(self, msg: Any) -> list[Any]:
        if type(msg) is NodeHello:
            if not 0 < len(msg.node_id) <= 128 or not msg.node_id.isprintable():
                raise self._error("NODE_HELLO: the node id must be 1-128 printable characters")
            self.node_id = msg.node_id  # named in the refusal's log line
            self._check_version(msg.version, NODE_PROTOCOL_VERSION, f"node {msg.node_id!r}", "run one release on both")
            if len(msg.nonce) < 16:
                raise self._error("NODE_HELLO: bad nonce")
            self._their_nonce, self.info, self.peer_hello = msg.nonce, msg.info, msg
            self._set_state(State.AUTH)
            self._out.append(self.send(Challenge(self._nonce)))
            return []
        expected = proof(self._token, b"node", self._nonce, self._their_nonce, self.node_id)
        if not hmac.compare_digest(msg.proof, expected):
            raise self._error("authentication failed: wrong or missing token", CLOSE_AUTH)
        self._set_state(State.READY)
        return [self.peer_hello]


class NodeSide(_NodeLink):
    """A node's end of its link: sends :meth:`hello`, answers the challenge, checks the
    kernel's proof in its welcome and takes its settings (session, heartbeat interval,
    frame limit, service packages)."""

    role = "node"

    def hello(self) -> bytes:
        """The node's first message."""
        return self.send(NodeHello(NODE_PROTOCOL_VERSION, self.node_id, self._nonce, self.info))

    def _handshake(self, msg: Any) -> list[Any]:
        if type(msg) is Challenge:
            if len(msg.nonce) < 16:
                raise self._error("CHALLENGE: bad nonce")
            self._their_nonce = msg.nonce
            self._set_state(State.WELCOME)
            self._out.append(self.send(Auth(proof(self._token, b"node", msg.nonce, self._nonce, self.node_id))))
            return []
        expected = proof(self._token, b"kernel", self._nonce, self._their_nonce, self.node_id)
        if not hmac.compare_digest(msg.proof, expected):
            raise self._error("the kernel failed to prove it holds the token", CLOSE_AUTH)
        self.session, self.heartbeat_interval = msg.session, msg.heartbeat_interval
        self.packages = dict(msg.packages)
        self._open_with(msg.max_frame)
        return []
