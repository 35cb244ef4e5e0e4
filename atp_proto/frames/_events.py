"""Events the sans-IO :class:`~atp_proto.frames.Connection` returns to the application."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._frame import Frame
from ._types import BudgetWindow, Encoding, Payload, QoS


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event."""


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """The peer opened a stream: its first message (the SYN), reassembled.

    ``encoding`` is the stream's: ``Encoding.JSON`` when the SYN came as a JSON text
    frame (replies go out as text). ``end_stream`` is True when the SYN also carried FIN
    (no further input).
    """

    stream_id: int
    msg_seq: int
    payload: Payload
    qos: QoS
    ttl: int
    window: BudgetWindow
    meta: Mapping[str, Any]
    ext: Mapping[str, Any]
    end_stream: bool = False
    encoding: Encoding = Encoding.BINARY


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A whole (reassembled) message on an open stream.

    ``more`` mirrors the MORE flag (the seed's PARTIAL); ``end_stream`` the FIN flag.
    ``ext`` holds the first fragment's ext (for example ``telemetry`` on a FINAL).
    ``size`` is the credit the message cost; pass it to
    :meth:`Connection.acknowledge` once the application has consumed the message.
    """

    stream_id: int
    msg_seq: int
    payload: Payload
    ext: Mapping[str, Any]
    more: bool = False
    end_stream: bool = False
    size: int = 0


_new_event = object.__new__
_MR = MessageReceived.__dict__
(_mr_sid, _mr_seq, _mr_payload, _mr_ext, _mr_more, _mr_end, _mr_size) = (
    _MR[name].__set__
    for name in ("stream_id", "msg_seq", "payload", "ext", "more", "end_stream", "size")
)


def message_received(
    stream_id: int,
    msg_seq: int,
    payload: Payload,
    ext: Mapping[str, Any],
    more: bool,
    end_stream: bool,
    size: int,
) -> MessageReceived:
    """``MessageReceived(...)``, the same object, built through its slots: the frozen
    dataclass's ``__init__`` pays an ``object.__setattr__`` per field, about a third of
    this event's cost on the per-frame receive path (a client takes one per PARTIAL).
    tests/frames/test_fast_paths.py holds the two equal."""
    ev = _new_event(MessageReceived)
    _mr_sid(ev, stream_id)
    _mr_seq(ev, msg_seq)
    _mr_payload(ev, payload)
    _mr_ext(ev, ext)
    _mr_more(ev, more)
    _mr_end(ev, end_stream)
    _mr_size(ev, size)
    return ev


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """A stream ended abnormally.

    ``by_peer`` is True when the peer sent ERROR / RST, False when we reset it because
    the peer broke a rule (the ERROR frame is already queued) or a local limit fired
    (TTL, budget).
    """

    stream_id: int
    code: str
    message: str
    retry_after_ms: int | None = None
    by_peer: bool = True


@dataclass(frozen=True, slots=True)
class WindowUpdated(Event):
    """The peer granted send credit and/or changed the stream's budget window."""

    stream_id: int
    credit: int
    window: BudgetWindow | None = None


@dataclass(frozen=True, slots=True)
class BudgetReported(Event):
    """BUDGET_UPDATE from the router: usage of the stream so far."""

    stream_id: int
    usage: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CapabilitiesReceived(Event):
    """The peer's CAPABILITIES (already applied to flow control and fragmentation)."""

    caps: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HeartbeatAcked(Event):
    """The peer answered our heartbeat; ``rtt`` is in the units of ``now``."""

    rtt: float


@dataclass(frozen=True, slots=True)
class GoingAway(Event):
    """The peer is draining (ERROR EDRAINING on stream 0): open no new streams."""

    message: str
    retry_after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is over. ``by_peer`` False means we closed it for ``code``.

    The transport should flush :meth:`Connection.data_to_send` and close with
    :func:`~atp_proto.transports.base.ws_close_code` /
    :func:`~atp_proto.transports.base.quic_error_code` of ``code`` (the binding's mapping
    lives with the transports, not in the core).
    """

    code: str
    message: str
    by_peer: bool = True


@dataclass(frozen=True, slots=True)
class UnknownFrameReceived(Event):
    """A frame of an unknown type, ignored as the extension rules require."""

    frame: Frame = field(repr=False)
