"""The wire, sans I/O: bytes in, typed messages out; messages in, bytes to write.

:mod:`.protocol` holds the vocabulary (the message and code table, the versions, what
each side accepts in each state, the limits and close codes); :mod:`.connection` the one
connection every side drives (framing, limits, decoding by that table); :mod:`.pipe` and
:mod:`.node` the sides of the two conversations and their handshakes (a worker's HELLO; a
node's HMAC proofs both ways); :mod:`.serialization` how calls, results and errors
become bytes. No event loop and no sockets (``tests/test_architecture.py`` keeps it so):
the transports in :mod:`..executors.streams` and the plugins carry the bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.lazy import lazy_face

if TYPE_CHECKING:
    from . import node as node, pipe as pipe, protocol as protocol, serialization as serialization
    from .connection import Connection as Connection, Framing as Framing
    from .node import NodeKernelSide as NodeKernelSide, NodeSide as NodeSide
    from .pipe import PipeKernelSide as PipeKernelSide, PipeWorkerSide as PipeWorkerSide
    from .protocol import Event as Event, ProtocolError as ProtocolError, State as State
    from .serialization import dumps as dumps, loads as loads

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
