"""What a session needs from a transport, and how an ATP error closes one.

A transport moves the bytes of one ATP session between the peer and the session driver
(:mod:`atp_proto.session`); it knows nothing of streams, credit or routing. The protocol
below is what the session calls. It is stated in *units*: for WebSocket a unit is one
message (binary ``bytes`` or text ``str``, ATP-WS-003/010); a byte-stream transport hands
``bytes`` chunks of any size, which the core's decoder reassembles all the same. So the
session never assumes message boundaries carry meaning, only that a unit is handed on
whole and in order.

Closing is the one place a transport needs the core's vocabulary: a connection-level
``ErrorCode`` becomes a binding-specific close code (WebSocket close codes, ATP-WS close
code table; QUIC application error codes, spec §13.2). The session says *why*
(:meth:`Transport.close_with_error`), the transport picks the number — so the session
stays transport-neutral, and the mapping lives here, beside the transports, not in the
session.

Transports import nothing from :mod:`atp_proto.session` or :mod:`atp_proto.router`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from atp_proto.frames import ErrorCode

#: the longest close reason a transport sends, in code points (a WebSocket close frame
#: holds 123 bytes of it, which wsproto cuts between code points; QUIC's reason phrase is
#: kept as short)
CLOSE_REASON_MAX = 120
_SURROGATE = re.compile("[\ud800-\udfff]")

__all__ = [
    "WS_CLOSE_CODES",
    "ChannelData",
    "ChannelEnd",
    "ChannelReset",
    "Oversized",
    "StreamTransport",
    "TransportFault",
    "Transport",
    "TransportClosed",
    "close_reason",
    "error_code_for_quic_close",
    "error_code_for_ws_close",
    "quic_error_code",
    "ws_close_code",
]


class TransportClosed(Exception):
    """The peer is gone, or the transport was closed: nothing more can be sent or read."""


@dataclass(frozen=True)
class Oversized:
    """What :meth:`Transport.receive` returns for a unit over the binding's limit: its
    first bytes only (the rest was skipped as it arrived, so memory stays bounded), for
    the connection to answer with ETOOBIG (ATP-WS-012)."""

    prefix: bytes | str
    limit: int


@dataclass(frozen=True, slots=True)
class ChannelData:
    """What a per-stream transport's :meth:`Transport.receive` returns: bytes of one
    transport stream, ``channel`` being the ATP stream it carries (0: the control stream),
    any chunking. The session feeds it to ``Connection.receive_stream_data``, whose
    per-channel decoder enforces ATP-QUIC-005."""

    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChannelEnd:
    """The peer ended its side of the transport stream of ATP stream ``channel`` (a QUIC
    FIN) before this end ended its own: the session tells the core, which ends the ATP
    stream with EPROTO if it is still open (ATP-QUIC-024; never for the control stream,
    whose end is a :class:`TransportFault`, ATP-QUIC-025)."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelReset:
    """The peer reset the transport stream of ATP stream ``channel`` (QUIC RESET_STREAM
    or STOP_SENDING, ATP-QUIC-006): the session resets the ATP stream as by the peer."""

    channel: int


@dataclass(frozen=True, slots=True)
class TransportFault:
    """The peer broke a binding rule the transport checks itself (a QUIC stream naming an
    ATP stream that already has one, ATP-QUIC-002/005): the session closes with ``code``."""

    code: ErrorCode
    message: str


class Transport(Protocol):
    """One session's byte mover, as the session driver uses it."""

    async def receive(
        self,
    ) -> bytes | str | Oversized | ChannelData | ChannelEnd | ChannelReset | TransportFault:
        """The next unit (a per-stream transport: the last three only); raises
        :class:`TransportClosed` when the peer is gone."""
        ...

    async def send(self, data: bytes | str) -> None:
        """Send one unit. Concurrent calls leave in call order; a cancelled call leaves
        the transport usable (what it did not send goes first next time)."""
        ...

    async def flush(self) -> None:
        """Send what a cancelled :meth:`send` left behind, if anything."""
        ...

    def try_send(self, data: bytes | str) -> bool:
        """Send at once if no waiting is needed (what the socket does not take yet goes
        first with the next send or flush); False when nothing was sent."""
        ...

    async def close_with_error(self, code: ErrorCode | str, reason: str) -> None:
        """Close because the session ended with a connection-level ``code``; the
        transport maps it to its binding's close code."""
        ...

    async def aclose(self) -> None:
        """Close normally (no error)."""
        ...


class StreamTransport(Transport, Protocol):
    """A per-stream transport (QUIC, spec §13.2): each ATP stream on its own transport
    stream. :meth:`receive` returns :class:`ChannelData` / :class:`ChannelReset` /
    :class:`TransportFault`; output goes as the core's per-stream view
    (``Connection.stream_data_to_send``: ``(stream_id, bytes, end_stream)`` items)
    instead of :meth:`send`. The session tells the two kinds apart by ``per_stream``."""

    per_stream: bool  #: True
    #: bytes handed to the transport and not yet acknowledged by the peer (ATP-QUIC-010)
    pending_bytes: int
    #: set by the session: called when ``pending_bytes`` fell (room again)
    on_writable: Callable[[], None] | None

    async def send_streams(self, items: list[tuple[int, bytes, bool]]) -> None:
        """Write the items, each on its ATP stream's transport stream."""
        ...

    def try_send_streams(self, items: list[tuple[int, bytes, bool]]) -> bool:
        """Write the items at once if that needs no waiting (False: nothing written)."""
        ...


#: WebSocket close code used when a connection-level error of this code closes the session.
WS_CLOSE_CODES: dict[ErrorCode, int] = {
    ErrorCode.EPROTO: 1002,
    ErrorCode.ESEC: 1008,
    ErrorCode.ETOOBIG: 1009,
    ErrorCode.EINTERNAL: 1011,
    ErrorCode.EDRAINING: 1001,
}


def ws_close_code(code: ErrorCode | str) -> int:
    """WebSocket close code for a connection-level error (ATP-WS close code table): the
    table above, else 4000 + the code's index in the registry; an unknown code is 1002."""
    try:
        ec = ErrorCode(code)
    except ValueError:
        return 1002
    if ec in WS_CLOSE_CODES:
        return WS_CLOSE_CODES[ec]
    return 4000 + list(ErrorCode).index(ec)


def error_code_for_ws_close(close_code: int | None) -> ErrorCode:
    """The inverse of :func:`ws_close_code`, for a session that ended without an ERROR
    frame: what the close code says, EINTERNAL when it says nothing (1000, 1006, none)."""
    for ec, wc in WS_CLOSE_CODES.items():
        if wc == close_code:
            return ec
    codes = list(ErrorCode)
    if close_code is not None and 4000 <= close_code < 4000 + len(codes):
        return codes[close_code - 4000]
    return ErrorCode.EINTERNAL


def error_code_for_quic_close(close_code: int | None) -> ErrorCode:
    """The inverse of :func:`quic_error_code`, for a session that ended without an ERROR
    frame (that frame may be lost before CONNECTION_CLOSE, RFC 9000 §10.2: the close code
    is the authority, ATP-QUIC-014): EINTERNAL for a normal close (0) or an unknown code."""
    codes = list(ErrorCode)
    if close_code is not None and 0x100 <= close_code < 0x100 + len(codes):
        return codes[close_code - 0x100]
    return ErrorCode.EINTERNAL


def quic_error_code(code: ErrorCode | str) -> int:
    """QUIC application error code for a connection-level error: 0x100 + registry index."""
    try:
        return 0x100 + list(ErrorCode).index(ErrorCode(code))
    except ValueError:
        return 0x100


def close_reason(reason: str) -> str:
    """``reason`` as a close frame can carry it: at most :data:`CLOSE_REASON_MAX` code
    points, a lone surrogate (no UTF-8 text can hold one) as U+FFFD. A reason that does not
    encode would raise in the sender — over QUIC the endpoint's, shared by every
    connection of the socket."""
    reason = reason[:CLOSE_REASON_MAX]
    if not reason.isascii():
        reason = _SURROGATE.sub("\ufffd", reason)
    return reason
