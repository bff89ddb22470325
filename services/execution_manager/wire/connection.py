"""One end of a conversation on the wire, without I/O: the base every side shares.

Bytes in, messages out; messages in, bytes out (the websockets model: framing, limits
and decoding here, each handshake in a side, see :mod:`.pipe` and :mod:`.node`). A
transport feeds what it reads to :meth:`Connection.receive_data` and writes what
:meth:`Connection.send` and :meth:`Connection.outgoing` return; tests do the same with
bytes alone.

Two framings carry the messages:

- ``Framing.STREAM``: on a byte stream (a pipe, a socket) each message is prefixed by
  its length as a 4-byte big-endian integer and may arrive in any number of pieces;
- ``Framing.MESSAGE``: on a message transport (a websocket) each transport message holds
  one or more messages back to back, so many in flight cost one transport message.

One limit applies per frame (a stream's frame, a transport message): ``max_frame`` once
open, ``handshake_max_frame`` before, refused with :data:`~.protocol.CLOSE_TOO_BIG`. What
a side accepts in each state is :data:`~.protocol.ACCEPTS`, the one table; every message
is decoded into its declared field types, for exactly those, before anything is
unpickled, so a peer that sends garbage gets a :class:`~.protocol.ProtocolError` naming
it and a close code, never a failure deep inside the kernel.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

import msgspec

from .protocol import (
    ACCEPTS,
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    CLOSE_VERSION,
    LENGTH,
    PIPE_MAX_FRAME,
    Error,
    Message,
    ProtocolError,
    Result,
    State,
    decoder,
    encode,
    explain,
    frame,
    wire_name,
)


class Framing(StrEnum):
    """How messages are delimited on a transport (see the module docstring)."""

    STREAM = "stream"
    MESSAGE = "message"


class Connection:
    """One side of a conversation: ``conversation`` and ``role`` name its rows in
    :data:`~.protocol.ACCEPTS`. A side with a handshake starts in ``State.HELLO`` and
    implements :meth:`_handshake`; one without starts open.

    ``peer`` names the other end in errors. With ``keep_answers`` (stream framing), each
    RESULT and ERROR frame received is kept as it came, by call id, for a relay that
    forwards it without encoding it again (a node agent): take it with
    :meth:`answer_frame`.
    """

    conversation: ClassVar[str]
    role: ClassVar[str]
    # Close codes for an unexpected message in a handshake state (default CLOSE_PROTOCOL).
    refusal_codes: ClassVar[dict[State, int]] = {}

    def __init__(
        self, *, max_frame: int = PIPE_MAX_FRAME, handshake_max_frame: int | None = None,
        framing: Framing = Framing.STREAM, peer: str = "", keep_answers: bool = False,
    ) -> None:
        if (self.conversation, self.role, State.OPEN) not in ACCEPTS:
            known = sorted({f"{c}/{r}" for c, r, _ in ACCEPTS})
            raise ValueError(f"role must be one of {', '.join(known)}, not {self.conversation}/{self.role}")
        self.framing = Framing(framing)
        self.max_frame = max_frame
        self.handshake_max_frame = max_frame if handshake_max_frame is None else handshake_max_frame
        self.peer = peer
        states = [s for c, r, s in ACCEPTS if (c, r) == (self.conversation, self.role)]
        # While a handshake runs, everything this side receives in any state decodes, so a
        # refusal can say what was expected instead; once open, only what the table says.
        self._everything = tuple(dict.fromkeys(t for s in states for t in ACCEPTS[self.conversation, self.role, s]))
        self._earlier = tuple(t for t in self._everything if t not in ACCEPTS[self.conversation, self.role, State.OPEN])
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._answers: dict[int, bytes] | None = {} if keep_answers else None
        self._set_state(State.HELLO if State.HELLO in states else State.OPEN)

    def _set_state(self, state: State) -> None:
        self.state = state
        self._accepts = ACCEPTS[self.conversation, self.role, state] if state is State.OPEN else self._everything
        self._decode = decoder(self._accepts).decode
        self._limit = self.max_frame if state is State.OPEN else self.handshake_max_frame

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    def _error(self, reason: str, code: int = CLOSE_PROTOCOL) -> ProtocolError:
        return ProtocolError(reason, self.peer, code)

    # -- sending ----------------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """The bytes that carry ``msg`` to the peer."""
        return frame(msg) if self.framing is Framing.STREAM else encode(msg)

    def outgoing(self) -> bytes:
        """What the handshake queued for the peer, as one write (b"" if nothing)."""
        out, self._out = self._out, []
        return b"".join(out)

    # -- receiving --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Any]:
        """The messages in ``data`` (with what earlier calls left buffered), decoded and
        checked for this side and state: typed values of :mod:`.protocol`. Handshake
        messages are handled here; each side says which it returns.

        :raises ProtocolError: a frame over the limit, undecodable bytes, an unknown or
            misplaced message, a field of the wrong type, a failed handshake; with the
            close code to refuse the peer with. The connection is then unusable.
        """
        if self.framing is not Framing.STREAM:
            return self._receive_message(data)
        buf = self._buf
        buf += data
        events: list[Any] = []
        pos = 0
        end = len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 4:
                (size,) = LENGTH.unpack_from(buf, pos)
                if size > self._limit:
                    raise self._too_big("frame", size)
                if end - pos - 4 < size:
                    break
                body = view[pos + 4 : pos + 4 + size]
                try:
                    msg = self._decode_one(body)
                    if self._answers is not None and (type(msg) is Result or type(msg) is Error):
                        self._answers[msg.call_id] = bytes(body)
                finally:
                    body.release()  # the buffer behind it is resized once the frames are read
                if self.state is State.OPEN:
                    events.append(msg)
                else:
                    events += self._step(msg)
                pos += 4 + size
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return events

    def _decode_one(self, body: bytes | memoryview) -> Any:
        try:
            return self._decode(body)
        except msgspec.ValidationError as exc:  # (a DecodeError too: first)
            raise self._error(self._explain(body, exc)) from None
        except msgspec.DecodeError as exc:
            raise self._error(f"undecodable frame: {exc}") from None
        except RecursionError:  # msgspec's own depth limit, inside a field of type Any
            raise self._error("msgpack nested too deep") from None

    def _explain(self, data: bytes | memoryview | object, exc: msgspec.ValidationError) -> str:
        earlier = self._earlier if self.state is State.OPEN else ()
        return explain(data, exc, self._accepts, self.role, earlier)

    def _receive_message(self, data: bytes) -> list[Any]:
        if len(data) > self._limit:
            raise self._too_big("message", len(data))
        try:
            messages = [self._decode(data)]  # one: the usual case
        except msgspec.DecodeError:  # several batched in one, or bad input, which this path names
            messages = self._receive_many(data)
        except RecursionError:
            raise self._error("msgpack nested too deep") from None
        if self.state is State.OPEN:
            return messages
        if len(messages) != 1:
            raise self._error(f"expected one handshake message, got {len(messages)}")
        return self._step(messages[0])

    def _receive_many(self, data: bytes) -> list[Any]:
        import msgpack  # only here: a worker process never batches, nor imports it

        unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=max(self._limit, 1))
        unpacker.feed(data)
        messages: list[Any] = []
        end = 0
        union = decoder(self._accepts).type
        try:
            for raw in unpacker:
                try:
                    messages.append(msgspec.convert(raw, union))
                except msgspec.ValidationError as exc:
                    raise self._error(self._explain(raw, exc)) from None
                end = unpacker.tell()
        except ProtocolError:
            raise
        except (msgpack.StackError, RecursionError):
            raise self._error("msgpack nested too deep") from None
        except Exception as exc:
            raise self._error(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
        if end != len(data):
            raise self._error("a message was cut short")
        return messages

    def _too_big(self, what: str, size: int) -> ProtocolError:
        return self._error(f"a {what} of {size} bytes exceeds the limit of {self._limit}", CLOSE_TOO_BIG)

    def pending(self) -> int:
        """Bytes still missing from the frame being received (stream framing; 0 between
        frames): a reader can ask for them in one read."""
        buf = self._buf
        if len(buf) < 4:
            return 0
        size: int = LENGTH.unpack_from(buf, 0)[0]
        return max(0, size + 4 - len(buf))

    def answer_frame(self, task_id: int) -> bytes | None:
        """The RESULT or ERROR frame received for ``task_id`` as it came (``keep_answers``),
        once: a relay forwards it without encoding it again."""
        return self._answers.pop(task_id, None) if self._answers is not None else None

    # -- the handshake ----------------------------------------------------------------

    def _step(self, msg: Any) -> list[Any]:
        """One handshake message: refused unless this state expects it, else the side's."""
        expected = ACCEPTS[self.conversation, self.role, self.state]
        if type(msg) not in expected:
            got = type(msg).__name__
            code = self.refusal_codes.get(self.state, CLOSE_PROTOCOL)
            if not expected:
                raise self._error(f"{got} before the handshake ended", code)
            first = " first" if self.state is State.HELLO else ""
            raise self._error(f"expected {' or '.join(map(wire_name, expected))}{first}, got {got}", code)
        return self._handshake(msg)

    def _handshake(self, msg: Any) -> list[Any]:
        """Act on a handshake message this state expects; the messages to return."""
        raise NotImplementedError(f"{type(self).__name__} has no handshake")

    def _check_version(self, theirs: object, ours: int, who: str, advice: str) -> None:
        if theirs != ours:
            raise self._error(f"{who} speaks wire version {theirs!r}; this kernel speaks {ours}: {advice}",
                              CLOSE_VERSION)
