"""Fragmentation and reassembly of one stream's messages (ATP-SEQ, ATP-LIMIT).

A message larger than the peer's fragment size leaves as frames that share its msg_seq,
numbered by frag_seq from 0, every one but the last flagged CONT (:func:`fragment`). On
receipt, :class:`Reassembler` collects them: ext on the first fragment only, FIN on the
last only, at most 65,536 fragments, at most ``max_message_size`` bytes in all. A message
in one frame keeps its zero-copy view of the receive buffer; fragments are copied, since a
view would keep a whole received buffer alive per one-byte fragment, outside
``max_message_size``. Pure values in and out: the stream checks sequencing and credit,
this checks only what a message's fragments owe each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from ._errors import RemoteProtocolError
from ._frame import Frame
from ._types import CONT_BIT, FIN_BIT, SYN_BIT, ErrorCode, FrameType, Payload

__all__ = ["Message", "Reassembler", "chunks", "fragment", "unpinned"]

_NO_EXT: Final[Mapping[str, Any]] = {}


class Message(NamedTuple):
    """A reassembled message: its payload, the union of its fragments' flags, the first
    fragment's ext, and the credit its last fragment cost."""

    payload: Payload
    flags: int
    ext: Mapping[str, Any]
    cost: int


class Reassembler:
    """The message being received on one stream, fragment by fragment."""

    __slots__ = ("bytes", "ext", "flags", "next", "parts")

    def __init__(self) -> None:
        self.next = 0  #: frag_seq expected next (0: no message under way)
        self.parts: list[bytes | memoryview] = []
        self.bytes = 0
        self.flags = 0
        self.ext: dict[str, object] | None = None

    def push(self, frame: Frame, cost: int, max_message_size: int) -> Message | None:
        """Add one in-sequence fragment (the caller checked msg_seq and frag_seq);
        return the message when this was its last fragment, else None.

        Raises:
            RemoteProtocolError: ext or FIN out of place (EPROTO), more than 65,536
                fragments or ``max_message_size`` bytes (ETOOBIG).
        """
        sid = frame.stream_id
        flags = frame.flags
        if self.next == 0:
            self.flags = flags
            self.ext = dict(frame.ext) if frame.ext else None
        else:
            if frame.ext:
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "ext is allowed on the first fragment only", stream_id=sid
                )
            if flags & SYN_BIT:  # pragma: no cover - a SYN on a known stream is refused first
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "SYN is allowed on the first fragment only", stream_id=sid
                )
            self.flags |= flags
        if flags & CONT_BIT:
            if flags & FIN_BIT:
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "FIN is allowed on the last fragment only", stream_id=sid
                )
            if self.next >= 0xFFFF:
                raise RemoteProtocolError(
                    ErrorCode.ETOOBIG, "message has more than 65536 fragments", stream_id=sid
                )
        size = self.bytes + len(frame.payload)
        if size > max_message_size:
            raise RemoteProtocolError(
                ErrorCode.ETOOBIG,
                f"message of more than {max_message_size} bytes (max_message_size)",
                stream_id=sid,
            )
        self.bytes = size
        if frame.payload:
            if flags & CONT_BIT or self.next:
                # A fragment: copy. A view would keep its whole received message alive (a
                # frame of max_frame_size per one-byte fragment), outside max_message_size.
                self.parts.append(bytes(frame.payload))
            else:  # a whole message in one frame: keep the zero-copy view
                self.parts.append(frame.payload)
        if flags & CONT_BIT:
            self.next += 1
            return None
        parts = self.parts
        payload: Payload
        if not parts:
            payload = b""
        elif len(parts) == 1:
            payload = parts[0]
        else:
            payload = b"".join(parts)
        message = Message(payload, self.flags, self.ext or _NO_EXT, cost)
        self.parts = []
        self.bytes = self.next = 0
        self.ext = None
        return message


def chunks(payload: bytes | memoryview, ext_len: int, frag: int) -> list[bytes | memoryview]:
    """The payload cut so that each frame's body (the first one's ext included) fits
    ``frag`` bytes; one chunk when it fits whole (no copy: views of the payload)."""
    total = len(payload)
    if total + ext_len <= frag:
        return [payload]
    room = max(frag - ext_len, 1)
    mv = memoryview(payload)
    out: list[bytes | memoryview] = [mv[:room]]
    out.extend(mv[i : i + frag] for i in range(room, total, frag))
    return out


def fragment(
    stream_id: int,
    msg_seq: int,
    payload: bytes | memoryview,
    flags: int,
    ext: Mapping[str, Any],
    ext_len: int,
    frag: int,
    *,
    qos: int = 0,
    ttl: int = 0,
    fin: bool = False,
) -> list[Frame]:
    """The DATA frames of one message: SYN, qos, ttl and ext on the first only, CONT on
    all but the last, FIN (when ``fin``) on the last only (ATP-SEQ-010..013)."""
    parts = chunks(payload, ext_len, frag)
    last = len(parts) - 1
    out: list[Frame] = []
    for i, chunk in enumerate(parts):
        f = flags if i == 0 else flags & ~SYN_BIT
        if i < last:
            f = (f | CONT_BIT) & ~FIN_BIT
        elif fin:
            f |= FIN_BIT
        out.append(
            Frame(
                FrameType.DATA,
                f,
                stream_id,
                msg_seq,
                i,
                qos if i == 0 else 0,
                ttl if i == 0 else 0,
                ext if i == 0 and ext else None,
                chunk,
            )
        )
    return out


def unpinned(payload: Payload) -> Payload:
    """A payload that does not keep a much larger received buffer alive."""
    if isinstance(payload, memoryview) and len(payload.obj) > 2 * len(payload) + 4096:  # type: ignore[arg-type]
        return bytes(payload)
    return payload
