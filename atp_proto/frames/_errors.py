"""The error hierarchy of the sans-IO core.

Every exception carries the ATP error code it maps to on the wire, whether it is
stream-level (resets one stream, the session survives) or connection-level (the
connection is closed), and the stream it concerns. Like h11, the core raises
:class:`LocalProtocolError` when *our* side asked for something the spec forbids, and
reports a peer's violation as :class:`RemoteProtocolError` (turned into an ERROR frame
by :class:`~atp_proto.frames.Connection`).
"""

from __future__ import annotations

from ._types import ErrorCode


class ATPError(Exception):
    """Base class of every error raised by ``atp_proto``.

    Attributes:
        code: the spec's error code (``ErrorCode`` or an unknown code string).
        message: a human-readable explanation, safe to send to the peer.
        stream_id: the stream concerned; 0 for connection-level errors.
        retry_after_ms: a hint for the peer, where retrying helps.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        *,
        stream_id: int = 0,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.stream_id = stream_id
        self.retry_after_ms = retry_after_ms

    @property
    def connection_level(self) -> bool:
        """True when the error closes the whole connection (stream 0)."""
        return self.stream_id == 0


class ProtocolError(ATPError):
    """A violation of the protocol (by either side)."""

    #: the error refuses a frame whose header carries SYN: a router then counts its stream
    #: id as used, as if the stream had been accepted (ATP-STREAM-002)
    syn: bool = False


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. Answer with an ERROR frame of ``code``."""


class LocalProtocolError(ProtocolError):
    """Our side tried to do something the protocol forbids (a bug in the caller)."""


class FrameDecodeError(RemoteProtocolError):
    """Bytes that cannot be decoded as an ATP frame (malformed header, body or JSON)."""


class StreamClosedError(LocalProtocolError):
    """Sending on a stream that is closed or was never opened."""


class SequenceExhausted(LocalProtocolError):
    """A message other than the FIN one would take the stream's last msg_seq (2³²−1):
    the stream must end rather than wrap (ATP-SEQ-005). Not a bug of the caller: the
    peer's SYN chose a msg_seq that leaves too little room. A router ends the stream
    with an ERROR of this code and message."""


class BudgetExceeded(ATPError):
    """Charging usage would exceed the stream's budget window (EBUDGET / EWINDOW)."""
