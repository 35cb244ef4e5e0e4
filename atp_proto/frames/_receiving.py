"""The input side of a :class:`~atp_proto.frames.Connection`: bytes, binary and text
messages in, frames dispatched by type through a dict (h2's "when in doubt use
dict-dispatch", aioquic's frame handlers), events out. A DATA frame goes to its
:class:`~atp_proto.frames._stream.Stream` once the connection has dealt with what only it
can (RST, a SYN opening a stream, frames for unknown or finished streams). Nothing a peer
sends raises out of ``receive_*``: a stream error resets the stream, a connection error
closes the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Final

from ._base import _text_cost
from ._codec import HEADER, HEADER_SIZE, FrameDecoder
from ._control import ControlMixin
from ._errors import (
    FrameDecodeError,
    RemoteProtocolError,
)
from ._events import (
    Event,
    MessageReceived,
    StreamReset,
    UnknownFrameReceived,
    _mr_end,
    _mr_ext,
    _mr_more,
    _mr_payload,
    _mr_seq,
    _mr_sid,
    _mr_size,
    _new_event,
)
from ._frame import Frame
from ._state import Role, StreamInput
from ._stream import _NO_EXT, Stream
from ._types import (
    FIN_BIT,
    MAX_STREAM_ID,
    MORE_BIT,
    RST_BIT,
    SLOW_BITS,
    SYN_BIT,
    U32_MAX,
    VERSION,
    Encoding,
    ErrorCode,
    FrameType,
    QoS,
)
from ._validate import validate_frame

__all__ = ["ReceiveMixin"]

_JSON: Final = Encoding.JSON
_BINARY: Final = Encoding.BINARY
_DATA: Final = FrameType.DATA
#: a DATA frame with one of these goes the general way (it opens or resets a stream)
_OUTSIDE_BITS: Final = SYN_BIT | RST_BIT

_Handler = Callable[["ReceiveMixin", Frame, int, float, list[Event], Encoding], None]


class ReceiveMixin(ControlMixin):
    """Input: the ``receive_*`` methods and the frame handlers."""

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Bytes from a byte-stream transport (QUIC stream, TCP): any chunking."""
        return self._receive_bytes(data, now, message=False)

    def _receive_bytes(self, data: bytes, now: float, *, message: bool) -> list[Event]:
        if self._closed is not None:
            return []
        self._last_recv = now
        self._peer_spoke_binary = True
        self._out_encoding = _BINARY
        events: list[Event] = []
        try:
            self._decoder.feed(data)
        except FrameDecodeError as exc:  # pragma: no cover - decoder already broken
            return self._connection_error(exc, events)
        self._drain_decoder(now, events, message=message)
        return events

    def receive_message(self, data: bytes, now: float) -> list[Event]:
        """One WebSocket binary message: one or more whole frames. A message that ends
        inside a frame is a connection error EPROTO, whatever the frame's header
        announces: the stream error ETOOBIG is for a frame over max_frame_size whose body
        the message holds (ATP-WS-001, ATP-LIMIT-001)."""
        events = self._receive_bytes(data, now, message=True)
        if self._closed is None and self._decoder.buffered:
            self._connection_error(
                FrameDecodeError(
                    ErrorCode.EPROTO,
                    f"binary message ends inside a frame ({self._decoder.buffered} bytes left)",
                ),
                events,
            )
        return events

    def receive_text(self, text: str | bytes, now: float) -> list[Event]:
        """One WebSocket text message: exactly one JSON frame."""
        if self._closed is not None:
            return []
        self._last_recv = now
        self._out_encoding = _JSON
        events: list[Event] = []
        try:
            frame = self.json.decode(text)
        except FrameDecodeError as exc:
            if exc.stream_id:
                self._stream_error(exc, events)
                return events
            return self._connection_error(exc, events)
        except Exception as exc:  # pragma: no cover - nothing may escape the core
            self._internal_error(exc, events)
            self.json.end_message()
            return events
        if frame is None:
            return events
        try:
            cost = _text_cost(text) if frame.type == FrameType.DATA else 0
            self._handle_frame(frame, cost, now, events, _JSON)
        except RemoteProtocolError as exc:
            if exc.stream_id:
                self._stream_error(exc, events)
            else:
                self._connection_error(exc, events)
        except Exception as exc:  # pragma: no cover - nothing may escape the core
            self._internal_error(exc, events)
        finally:
            self.json.end_message()
        return events

    def receive_oversized(self, prefix: bytes | str, limit: int, now: float) -> list[Event]:
        """A WebSocket message over the binding's size limit, of which the I/O layer kept
        only the first bytes and skipped the rest as it arrived (ATP-WS-012).

        ``prefix`` is the message's start (``bytes`` for a binary message: its first 24
        bytes are enough; ``str`` for text); ``limit`` is the binding's message limit it
        passed. A binary message whose first frame is itself over max_frame_size on a
        stream other than 0 is a stream error ETOOBIG (its body skipped, ATP-LIMIT-001);
        anything else over the limit is a connection error ETOOBIG.
        """
        if self._closed is not None:
            return []
        self._last_recv = now
        events: list[Event] = []
        if isinstance(prefix, str):
            self._out_encoding = _JSON
            what = "text message"
        else:
            self._peer_spoke_binary = True
            self._out_encoding = _BINARY
            what = "binary message"
            if len(prefix) >= HEADER_SIZE and not self._decoder.buffered:
                version, ftype, flags, _, sid, _, _, _, ext_len, pay_len = HEADER.unpack_from(
                    prefix
                )
                lim = self.limits
                body = ext_len + pay_len
                if (
                    version == VERSION
                    and sid
                    and (body > lim.max_frame_size or ext_len > lim.max_ext_size)
                ):
                    self.frames_received[ftype] = self.frames_received.get(ftype, 0) + 1
                    err = RemoteProtocolError(
                        ErrorCode.ETOOBIG,
                        f"frame body of {body} bytes exceeds max_frame_size {lim.max_frame_size}",
                        stream_id=sid,
                    )
                    err.syn = bool(flags & SYN_BIT)  # its id is used (ATP-STREAM-002)
                    self._stream_error(err, events)
                    return events
        return self._connection_error(
            RemoteProtocolError(
                ErrorCode.ETOOBIG, f"{what} larger than {limit} bytes (the binding's limit)"
            ),
            events,
        )

    def receive_stream_data(self, channel: int, data: bytes, now: float) -> list[Event]:
        """Bytes from one stream of a per-stream transport (QUIC): ``channel`` is the ATP
        stream the transport stream carries (0: the control stream), any chunking.

        Each channel has its own decoder, so a frame split across QUIC packets on one
        stream never mixes with another's. A frame whose stream_id is not the channel's
        is a connection error EPROTO (ATP-QUIC-005).
        """
        if self._closed is not None:
            return []
        self._last_recv = now
        self._peer_spoke_binary = True
        self._out_encoding = _BINARY
        dec = self._channels.get(channel)
        events: list[Event] = []
        if dec is None:
            if not 0 <= channel <= MAX_STREAM_ID:  # the reserved bit (ATP-FRAME-004)
                return self._connection_error(
                    RemoteProtocolError(ErrorCode.EPROTO, f"stream id {channel} is not valid"),
                    events,
                )
            dec = self._channels[channel] = FrameDecoder(self.limits)
        try:
            dec.feed(data)
        except FrameDecodeError as exc:  # pragma: no cover - decoder already broken
            return self._connection_error(exc, events)
        self._drain_channel(now, events, dec, channel)
        if channel and channel not in self._streams and not dec.buffered:
            self._channels.pop(channel, None)  # a forgotten stream's last frame is done
        return events

    def receive_stream_reset(self, channel: int, now: float) -> list[Event]:
        """The peer reset the transport stream of ATP stream ``channel`` (QUIC
        RESET_STREAM or STOP_SENDING, ATP-QUIC-006): the ATP stream is reset as by an RST
        from the peer, and what was buffered of the channel's bytes is dropped."""
        if self._closed is not None or not channel:
            return []
        self._last_recv = now
        self._channels.pop(channel, None)
        events: list[Event] = []
        rec = self._streams.get(channel)
        if rec is not None and not rec.closed:
            self._close_stream(rec, StreamInput.RECV_RST)
            events.append(
                StreamReset(channel, "RST", "transport stream reset by the peer", by_peer=True)
            )
        elif rec is not None:
            rec.send.clear()
            self._maybe_forget(rec)
        return events

    def receive_stream_end(self, channel: int, now: float) -> list[Event]:
        """The peer ended its side of ATP stream ``channel``'s transport stream (a QUIC
        FIN) before this end ended the ATP stream. Still open, it can take no more input
        (WINDOW_UPDATE, RST) from the peer: a stream error EPROTO (ATP-QUIC-024; for a
        router, the client broke ATP-QUIC-012) — and so is a stream closed by our FIN that
        still waits in the outbox for credit, which can no longer come (the ERROR ends it
        instead, its queued frames dropped). Closed and flushed, it is nothing; what was
        buffered of the channel's bytes (a frame cut by the end) is dropped."""
        if self._closed is not None or not channel:
            return []
        self._last_recv = now
        self._channels.pop(channel, None)
        rec = self._streams.get(channel)
        events: list[Event] = []
        if rec is not None and (not rec.closed or rec.send.outbox_bytes):
            self._stream_error(
                RemoteProtocolError(
                    ErrorCode.EPROTO,
                    f"the peer ended stream {channel}'s transport stream before the stream ended",
                    stream_id=channel,
                ),
                events,
            )
        return events

    def _drain_decoder(
        self,
        now: float,
        events: list[Event],
        dec: FrameDecoder | None = None,
        channel: int | None = None,
        message: bool = False,
    ) -> None:
        if dec is None:
            dec = self._decoder
        while self._closed is None:
            start = dec.buffered
            try:
                frame = dec.next_frame()
                if frame is None:
                    return
                if channel is not None and frame.stream_id != channel:
                    raise RemoteProtocolError(  # ATP-QUIC-005
                        ErrorCode.EPROTO,
                        f"a frame for stream {frame.stream_id} on the transport stream of "
                        f"{'the control stream' if not channel else f'stream {channel}'}",
                    )
                cost = start - dec.buffered
                self._handle_frame(frame, cost, now, events, _BINARY)
            except RemoteProtocolError as exc:
                if message and dec.skipping:
                    # ATP-WS-001: the whole message is in, and it ends inside this frame
                    exc = FrameDecodeError(
                        ErrorCode.EPROTO,
                        f"binary message ends inside a frame ({exc.message}; "
                        f"{dec.buffered} bytes missing)",
                    )
                if exc.stream_id:
                    self._stream_error(exc, events)
                else:
                    self._connection_error(exc, events)
            except Exception as exc:  # pragma: no cover - nothing may escape the core
                self._internal_error(exc, events)

    def _drain_channel(
        self, now: float, events: list[Event], dec: FrameDecoder, channel: int
    ) -> None:
        """:meth:`_drain_decoder` for one channel of a per-stream transport, with the
        relay's frame — DATA without ext, no SYN or RST, for the channel's own stream
        while it can receive — handed straight to its stream: what
        :meth:`_handle_frame` and :meth:`_handle_data` do with it, in fewer calls (a
        client takes one per PARTIAL). Every other frame goes their way.
        tests/frames/test_fast_paths.py holds both paths to the same events and state."""
        streams = self._streams
        counts = self.frames_received
        max_message = self.limits.max_message_size
        rec = streams.get(channel) if channel else None
        left = dec.buffered  # only next_frame() changes it on the shortcut
        while self._closed is None:
            start = left
            try:
                frame = dec.next_frame()
                if frame is None:
                    return
                left = dec.buffered
                if frame.stream_id != channel:
                    raise RemoteProtocolError(  # ATP-QUIC-005
                        ErrorCode.EPROTO,
                        f"a frame for stream {frame.stream_id} on the transport stream of "
                        f"{'the control stream' if not channel else f'stream {channel}'}",
                    )
                cost = start - left
                if (
                    rec is not None
                    and frame.type is _DATA
                    and not frame.flags & _OUTSIDE_BITS
                    and not frame.ext
                    and rec.receivable
                ):
                    counts[_DATA] = counts.get(_DATA, 0) + 1
                    flags = frame.flags
                    recv = rec.recv
                    msg_seq = frame.msg_seq
                    if (
                        not flags & SLOW_BITS
                        and msg_seq == rec.recv_seq
                        and not frame.frag_seq
                        and not rec.reasm.next
                        and cost <= recv.credit
                        and cost <= max_message  # the payload is within it (ATP-SEQ-007)
                    ):
                        # Stream.receive_data's own shortcut (a whole in-order message
                        # within credit), inline with its event's slots: the client's
                        # per-PARTIAL path, two calls and a tuple less per frame
                        recv.credit -= cost
                        rec.recv_seq = msg_seq + 1  # never wraps (ATP-SEQ-005)
                        ev = _new_event(MessageReceived)
                        _mr_sid(ev, channel)
                        _mr_seq(ev, msg_seq)
                        _mr_payload(ev, frame.payload)
                        _mr_ext(ev, _NO_EXT)
                        _mr_more(ev, bool(flags & MORE_BIT))
                        _mr_end(ev, bool(flags & FIN_BIT))
                        _mr_size(ev, cost)
                        events.append(ev)
                        if flags & FIN_BIT:
                            rec.apply(StreamInput.RECV_FIN)
                            self._maybe_forget(rec)
                        continue
                    event, consumed = rec.receive_data(frame, cost, max_message)
                    if consumed:
                        self.acknowledge(channel, consumed)
                    if event is not None:
                        events.append(event)
                        if event.end_stream:
                            rec.apply(StreamInput.RECV_FIN)
                            self._maybe_forget(rec)
                    continue
                self._handle_frame(frame, cost, now, events, _BINARY)
            except RemoteProtocolError as exc:
                if exc.stream_id:
                    self._stream_error(exc, events)
                else:
                    self._connection_error(exc, events)
            except Exception as exc:  # pragma: no cover - nothing may escape the core
                self._internal_error(exc, events)
            # the general way may have opened, ended or skipped something: look again
            rec = streams.get(channel) if channel else None
            left = dec.buffered

    def _internal_error(self, exc: Exception, events: list[Event]) -> None:  # pragma: no cover
        """A failure of our own while handling input: the session ends with an ERROR
        (EINTERNAL), never with an exception out of ``receive_*`` (the tests hold that
        this is unreachable; it guards the session should a bug make it reachable)."""
        if self._closed is not None:
            return
        name = type(exc).__name__
        self._connection_error(
            RemoteProtocolError(ErrorCode.EINTERNAL, f"internal error handling a frame ({name})"),
            events,
        )

    def _handle_frame(
        self, frame: Frame, cost: int, now: float, events: list[Event], encoding: Encoding
    ) -> None:
        ftype = frame.type
        self.frames_received[ftype] = self.frames_received.get(ftype, 0) + 1
        sid = frame.stream_id
        if ftype or not sid or frame.ext:  # a PARTIAL / input without ext has no such rule
            try:
                validate_frame(frame, self.limits)  # the rules that need no state
            except RemoteProtocolError as exc:
                if not frame.flags & SYN_BIT:
                    if exc.stream_id and self._is_gone(exc.stream_id):
                        return  # ATP-FLAG-004: a frame for a closed stream is discarded
                elif ftype == FrameType.DATA:
                    exc.syn = True  # its id is used (ATP-STREAM-002)
                raise
        handler = self._HANDLERS.get(ftype)
        if handler is None:
            events.append(UnknownFrameReceived(frame))  # ATP-EXT: ignore unknown types
        else:
            handler(self, frame, cost, now, events, encoding)

    # -- DATA ---------------------------------------------------------------------

    def _handle_data(
        self, frame: Frame, cost: int, now: float, events: list[Event], encoding: Encoding
    ) -> None:
        sid = frame.stream_id
        if sid == 0:
            self._handle_heartbeat(frame, now, events)
            return
        rec = self._streams.get(sid)
        if rec is None or frame.flags & (SYN_BIT | RST_BIT) or not rec.receivable:
            rec = self._data_outside_stream(frame, rec, now, events, encoding)
            if rec is None:
                return
        event, consumed = rec.receive_data(frame, cost, self.limits.max_message_size)
        if consumed:
            self.acknowledge(sid, consumed)
        if event is not None:
            events.append(event)
            if event.end_stream:
                rec.apply(StreamInput.RECV_FIN)
                self._maybe_forget(rec)

    def _data_outside_stream(
        self,
        frame: Frame,
        rec: Stream | None,
        now: float,
        events: list[Event],
        encoding: Encoding,
    ) -> Stream | None:
        """What a DATA frame does before its stream can take it: RST, a SYN opening a
        stream, a frame for an unknown, finished or half-closed stream. Returns the stream
        to hand the frame to, or None when the frame is done with (discarded, reset)."""
        sid = frame.stream_id
        flags = frame.flags
        if flags & RST_BIT:
            # ATP-FLAG: RST aborts the stream now, whatever its sequence or credit.
            if rec is not None and not rec.closed:
                self._close_stream(rec, StreamInput.RECV_RST)
                events.append(StreamReset(sid, "RST", "stream reset by the peer", by_peer=True))
            elif rec is not None:
                rec.send.clear()
                self._maybe_forget(rec)
            elif sid > self._highest_id:
                # Never opened: the stream table has no 'idle / recv RST' row
                # (ATP-STREAM-009; ATP-FLAG-004's discard is for streams opened and closed).
                # Our ERROR is not answered with an ERROR (ATP-ERR-011): no ping-pong.
                raise self._never_opened("RST", sid)
            return None
        syn = bool(flags & SYN_BIT)
        if rec is not None:
            if syn:
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, f"SYN on stream {sid}, which is already open", stream_id=sid
                )
            if rec.receivable:
                return rec
            if rec.closed:
                return None  # closed but still flushing our outbox: discard
            raise RemoteProtocolError(
                ErrorCode.EPROTO,
                f"DATA on stream {sid} after the peer's FIN ({rec.state.value})",
                stream_id=sid,
            )
        if not syn:
            if sid <= self._highest_id:
                return None  # closed stream: discard (races with RST / FIN)
            raise self._never_opened("DATA", sid)
        return self._accept_stream(frame, now, encoding)

    def _accept_stream(self, frame: Frame, now: float, encoding: Encoding) -> Stream:
        """A peer's SYN (router): the new stream, or the stream error refusing it."""
        sid = frame.stream_id
        if self.role is not Role.ROUTER:
            raise RemoteProtocolError(ErrorCode.EPROTO, "only clients open streams", stream_id=sid)
        if sid <= self._highest_id:
            raise RemoteProtocolError(
                ErrorCode.EPROTO,
                f"SYN on stream {sid}: stream ids must increase (highest so far "
                f"{self._highest_id})",
                stream_id=sid,
            )
        self._highest_id = sid
        self.json.note_stream_id(sid)  # ATP-JSON-002: aliases take the next *unused* id
        if self._draining:
            raise RemoteProtocolError(
                ErrorCode.EDRAINING,
                "the router is draining and accepts no new streams",
                stream_id=sid,
                retry_after_ms=self._drain_retry_ms,
            )
        if len(self._streams) >= self.limits.max_streams:
            raise RemoteProtocolError(
                ErrorCode.EWINDOW,
                f"too many concurrent streams (max_streams {self.limits.max_streams})",
                stream_id=sid,
                retry_after_ms=100,
            )
        rec = self._new_stream(sid, encoding)
        rec.apply(StreamInput.RECV_SYN)
        rec.qos = QoS(frame.qos) if frame.qos else QoS.SILVER
        if frame.ttl:
            rec.deadline = now + frame.ttl
            self.timer_stale = True
        window = frame.budget_window  # checked by validate_frame (ATP-BUDGET-008)
        if window is not None:
            rec.window = window
        rec.recv_seq = frame.msg_seq
        rec.send_seq = frame.msg_seq + 1
        if frame.msg_seq >= U32_MAX:
            # ATP-SEQ-005: our replies start at SYN.msg_seq + 1, which must not wrap
            raise RemoteProtocolError(
                ErrorCode.EPROTO,
                f"SYN msg_seq {frame.msg_seq} leaves no room for the router's replies",
                stream_id=sid,
            )
        return rec

    #: frame type -> handler; a type not here is ignored (ATP-EXT)
    _HANDLERS: ClassVar[dict[int, _Handler]] = {
        FrameType.DATA: _handle_data,
        FrameType.WINDOW_UPDATE: ControlMixin._handle_window_update,
        FrameType.ERROR: ControlMixin._handle_error,
        FrameType.CAPABILITIES: ControlMixin._handle_capabilities,
        FrameType.BUDGET_UPDATE: ControlMixin._handle_budget_update,
    }
