"""Session-level frames of a :class:`~atp_proto.frames.Connection`'s input: heartbeats,
WINDOW_UPDATE (credit and budget window), BUDGET_UPDATE, ERROR and CAPABILITIES. The
receive path (:mod:`._receiving`) dispatches to these by frame type; a frame reaches them
validated (:func:`~atp_proto.frames._validate.validate_frame`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ._base import ConnectionBase
from ._errors import RemoteProtocolError
from ._events import (
    BudgetReported,
    CapabilitiesReceived,
    ConnectionClosed,
    Event,
    GoingAway,
    HeartbeatAcked,
    StreamReset,
    WindowUpdated,
)
from ._frame import Frame
from ._state import Role, StreamInput
from ._types import ACK_BIT, Encoding, ErrorCode, Flags, FrameType

__all__ = ["ControlMixin"]

_JSON: Final = Encoding.JSON


class ControlMixin(ConnectionBase):
    """The handlers of the frames that are not a stream's data."""

    def _handle_heartbeat(self, frame: Frame, now: float, events: list[Event]) -> None:
        # HB set and the payload size: checked by validate_frame (ATP-FRAME-011)
        if frame.flags & ACK_BIT:
            if self._hb_sent_at is not None:
                events.append(HeartbeatAcked(now - self._hb_sent_at))
                self._hb_sent_at = None
            return
        self._queue(
            Frame(FrameType.DATA, Flags.HB | Flags.ACK, 0, payload=bytes(frame.payload)),
            self._out_encoding,
        )

    # -- control --------------------------------------------------------------------

    def _handle_window_update(
        self, frame: Frame, cost: int, now: float, events: list[Event], encoding: Encoding
    ) -> None:
        sid = frame.stream_id  # not 0, credit and window well formed: validate_frame
        rec = self._streams.get(sid)
        if rec is None:
            if sid <= self._highest_id:
                return  # closed stream
            raise self._never_opened("WINDOW_UPDATE", sid)
        if rec.closed and not rec.send.outbox:
            return
        credit = frame.ext.get("credit")
        if credit is not None:
            if rec.encoding is _JSON and not self._peer_sent_caps:
                credit = 0  # ATP-FLOW-007: its credit is already unlimited; nothing to add
            rec.send.grant(credit, sid)
            self._flush_outbox(rec)
        window = frame.budget_window
        if window is not None and self.role is Role.ROUTER:
            # the fields it names replace the client's (ATP-BUDGET-005); the router's
            # caps and its usage live in its ledger (router/budget.py), which the event
            # below reaches: the core keeps only the wire state
            rec.window = rec.window.merged(window)
        events.append(WindowUpdated(sid, rec.send.credit, window))
        self._maybe_forget(rec)

    def _handle_budget_update(
        self, frame: Frame, cost: int, now: float, events: list[Event], encoding: Encoding
    ) -> None:
        sid = frame.stream_id
        rec = self._streams.get(sid)
        if self.role is Role.ROUTER:
            if rec.closed if rec is not None else sid <= self._highest_id:
                return  # ATP-FRAME-023 / ATP-FLAG-004: on a closed stream it is discarded
            raise RemoteProtocolError(
                ErrorCode.EPROTO, "BUDGET_UPDATE is sent by the router only", stream_id=sid
            )
        if rec is None:
            if sid <= self._highest_id:
                return  # ATP-FLAG-004: opened and closed, it is discarded
            # ATP-STREAM-016: as a WINDOW_UPDATE there (ATP-STREAM-013), and as the
            # router treats a non-SYN frame on an id never opened (ATP-STREAM-003)
            raise self._never_opened("BUDGET_UPDATE", sid)
        usage = frame.ext.get("usage")
        if not rec.closed and isinstance(usage, Mapping):  # closed, flushing: ATP-FLAG-004
            events.append(BudgetReported(sid, usage))

    def _handle_error(
        self, frame: Frame, cost: int, now: float, events: list[Event], encoding: Encoding
    ) -> None:
        err = frame.ext["error"]  # a map with a text code and message: validate_frame
        code = str(err["code"])
        message = str(err["message"])
        retry = err.get("retry_after_ms")
        retry = retry if isinstance(retry, int) and not isinstance(retry, bool) else None
        sid = frame.stream_id
        if sid == 0:
            if code == ErrorCode.EDRAINING:
                self._peer_draining = True
                events.append(GoingAway(message, retry))
                return
            self._closed = ConnectionClosed(code, message, by_peer=True)
            self._streams.clear()
            events.append(self._closed)
            return
        rec = self._streams.get(sid)
        if rec is None:
            return
        if rec.closed:  # it was flushing its outbox: nothing more will be read
            rec.send.clear()
            self._maybe_forget(rec)
            return
        self._close_stream(rec, StreamInput.RECV_RST)
        events.append(StreamReset(sid, code, message, retry, by_peer=True))

    def _handle_capabilities(
        self, frame: Frame, cost: int, now: float, events: list[Event], encoding: Encoding
    ) -> None:
        caps = frame.ext["caps"]  # on stream 0, a map offering version 1: validate_frame
        self._peer = self._peer.parse(caps)
        self._frag_size = self._peer.frag_size
        first = not self._peer_sent_caps
        self._peer_sent_caps = True
        self.peer_caps = caps
        events.append(CapabilitiesReceived(caps))
        if first and self.role is Role.ROUTER:
            self._queue(self._caps_frame(), encoding)
