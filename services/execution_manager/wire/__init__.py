"""The wire, sans I/O: bytes in, typed messages out; messages in, bytes to write.

:mod:`.protocol` holds the one message table (codes, msgspec Structs, the version)
and the pipe's connection; :mod:`.node` the kernel-node conversation (handshake,
HMAC authentication, close codes); :mod:`.serialization` how calls, results and
errors become bytes. No event loop and no sockets (``tests/test_architecture.py``
keeps it so): the transports in :mod:`..executors.streams` and the plugins carry the
bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.lazy import lazy_face

if TYPE_CHECKING:
    from . import node as node, protocol as protocol, serialization as serialization
    from .node import Refused as Refused
    from .protocol import Connection as Connection, Event as Event, ProtocolError as ProtocolError
    from .serialization import dumps as dumps, loads as loads

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
