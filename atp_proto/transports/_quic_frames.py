"""Byte-level helpers of the QUIC binding (spec §13.2) that need no connection state:
waiting for a new QUIC stream's whole first frame, and the QUIC code of a stream's last
frame. Used by :mod:`._quic_conn`."""

from __future__ import annotations

from atp_proto.frames import HEADER, HEADER_SIZE, ErrorCode, decode_frame
from atp_proto.frames._types import RST_BIT

from .base import quic_error_code

__all__ = ["FIRST_FRAME_LIMIT", "FirstFrame", "reset_code"]

_ECANCELLED_QUIC = quic_error_code(ErrorCode.EPROTO) - 1  # 0xFF: an RST without a code


#: a first frame announcing a larger body is handed on at once (the core refuses it)
FIRST_FRAME_LIMIT = 2 * 1024 * 1024


class FirstFrame:
    """A new QUIC stream's bytes until its whole first frame (the SYN) is here, kept as
    pieces and joined once when handed on (joining at each piece would copy a large SYN
    quadratically often: a peer sending one in small pieces could make us burn CPU)."""

    __slots__ = ("need", "parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.need = 0  #: the first frame's whole size once its header is here, else 0

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if not self.need and self.size >= HEADER_SIZE:
            if len(self.parts) > 1:
                self.parts = [b"".join(self.parts)]
            fields = HEADER.unpack_from(self.parts[0])
            self.need = HEADER_SIZE + int(fields[8]) + int(fields[9])

    def complete(self) -> bool:
        """The whole first frame is here: its turn may be taken (the core handles a
        stream's SYN only once it is complete, so handing on a part would let a later
        SYN in first). A frame announcing more than FIRST_FRAME_LIMIT is not waited for."""
        return bool(self.need) and (self.size >= self.need or self.need > FIRST_FRAME_LIMIT)

    def take(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


def reset_code(data: bytes) -> int | None:
    """The QUIC code for the last frame of ``data`` if it resets its stream (an ERROR
    frame: its code's QUIC code; a bare RST: 0xFF), else None (a FIN)."""
    pos = 0
    last = 0
    n = len(data)
    while pos + HEADER_SIZE <= n:
        last = pos
        fields = HEADER.unpack_from(data, pos)
        pos += HEADER_SIZE + fields[8] + fields[9]
    flags = data[last + 2] if n >= HEADER_SIZE else 0
    if not flags & RST_BIT:
        return None
    try:
        frame, _ = decode_frame(data, last)
        err = frame.ext.get("error") if frame.ext else None
        if isinstance(err, dict) and "code" in err:
            return quic_error_code(str(err["code"]))
    except Exception:  # a bare RST frame, or something the core would not encode
        pass
    return _ECANCELLED_QUIC
