"""The kernel-worker conversation on a local worker's pipe: its two sides, sans I/O.

Conversation (stream framing, see :mod:`.connection`)::

    worker -> kernel   HELLO (wire version, worker id, pid, python version, info)
    kernel -> worker   CALL (call id, kind, payload, soft timeout) ... CANCEL, SHUTDOWN,
                       RESPONSE, HEARTBEAT (a ping to an idle worker, answered in kind)
    worker -> kernel   RESULT | ERROR (call id, ...), CANCELLED (a cancelled call it
                       dropped before it began), HEARTBEAT, PROGRESS, LOG, REQUEST, GOODBYE

The handshake is the worker's HELLO alone: both ends are processes of one machine and
one user, so nothing is proved; the version is checked before anything is unpickled.
Call ids are task ids: every attempt of a call carries its call's. A late answer to an
attempt the kernel gave up comes from a worker the call is no longer assigned to, and
is dropped there (the scheduler keeps which worker holds each attempt).
"""

from __future__ import annotations

from typing import Any

from .connection import Connection
from .protocol import PROTOCOL_VERSION, Hello, State


class PipeKernelSide(Connection):
    """The kernel's end of a worker's pipe: accepts nothing before a HELLO of this wire
    version, which it returns as the first message; ``peer`` becomes the worker id it
    announces unless given."""

    conversation, role = "pipe", "kernel"
    peer_hello: Hello | None = None

    def _handshake(self, msg: Any) -> list[Any]:
        self._check_version(msg.version, PROTOCOL_VERSION, f"worker {msg.worker_id!r}",
                            "the worker's Python has another release of microkernel-em")
        self.peer_hello = msg
        self.peer = self.peer or msg.worker_id
        self._set_state(State.OPEN)
        return [msg]


class PipeWorkerSide(Connection):
    """A worker's end of its pipe: open at once; its first message is :meth:`hello`."""

    conversation, role = "pipe", "worker"

    def hello(self, worker_id: str, pid: int, python: str, info: dict[str, Any] | None = None) -> bytes:
        """The worker's first message."""
        return self.send(Hello(PROTOCOL_VERSION, worker_id, pid, python, info or {}))
