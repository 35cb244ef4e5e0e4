"""The state a :class:`~atp_proto.frames.Connection` holds, and the helpers its input
side (``_receiving``) and output side (``_sending``) share: stream bookkeeping, error
conversion, credit return, the output queue. See ``_connection`` for the theory of
operation. The class is split in three files to keep each readable (no file over ~500
lines), with the dependencies downward: ``_connection`` -> ``_receiving`` / ``_sending``
-> ``_base``; neither side calls into the other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from ._caps import PeerCaps, our_caps
from ._codec import HEADER_SIZE, FrameDecoder, encode_frame
from ._errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    StreamClosedError,
)
from ._events import (
    ConnectionClosed,
    Event,
    StreamReset,
)
from ._frame import Frame
from ._json import JsonMapping
from ._output import Output
from ._state import Role, StreamInput, StreamState
from ._stream import Stream
from ._types import (
    CONT_BIT,
    DEFAULT_LIMITS,
    FIN_BIT,
    MAX_WINDOW,
    RST_BIT,
    BudgetWindow,
    Encoding,
    ErrorCode,
    FrameType,
    Limits,
)
from ._windows import RecvWindow, SendWindow

__all__ = ["ConnectionBase"]

_TEXT_PEER_WINDOW: Final = MAX_WINDOW
_JSON: Final = Encoding.JSON
_RESETS: Final = (StreamInput.SEND_RST, StreamInput.RECV_RST)
#: characters (code points) of every ERROR message the core sends, its own and the
#: application's: a refusal may quote a peer's input (a duplicate map key), a router's may
#: carry an adapter's or an upstream's text, and a quote of a peer's 400 KB key must not come
#: back as a 400 KB ERROR, nor as an ext over the peer's max_ext_size (ATP-LIMIT-004)
MAX_ERROR_MESSAGE: Final = 256
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _bounded(message: str) -> str:
    """``message`` as an ERROR carries it: at most :data:`MAX_ERROR_MESSAGE` code points,
    cut with a note of how long it was. The cut falls between code points, so never inside
    a UTF-8 sequence (at most 4 bytes each: 1,024 bytes in all), and a lone surrogate, which
    no UTF-8 or CBOR text can hold (ATP-JSON-017), becomes U+FFFD: the frame always encodes."""
    if not message.isascii():
        try:
            message.encode("utf-8")
        except UnicodeEncodeError:
            message = _SURROGATE.sub("\ufffd", message)
    if len(message) <= MAX_ERROR_MESSAGE:
        return message
    tail = f"... ({len(message)} characters)"
    return message[: MAX_ERROR_MESSAGE - len(tail)] + tail


class ConnectionBase:
    """The state and shared helpers of :class:`Connection` (see the module docstring)."""

    def __init__(
        self,
        role: Role,
        *,
        limits: Limits = DEFAULT_LIMITS,
        now: float,
        heartbeat: float | None = None,
        encoding: Encoding = Encoding.BINARY,
    ) -> None:
        self.role = role
        self.limits = limits
        self.json = JsonMapping(limits)
        self._decoder = FrameDecoder(limits)
        #: one decoder per input channel of a per-stream transport (QUIC: an ATP stream's
        #: QUIC stream; 0 the control stream), see ``receive_stream_data``
        self._channels: dict[int, FrameDecoder] = {}
        self._streams: dict[int, Stream] = {}
        self._highest_id = 0
        self._output = Output()
        #: frames handled, by frame type value: for metrics (received / sent)
        self.frames_received: dict[int, int] = {}
        self.frames_sent: dict[int, int] = {}
        #: encoding of session-level frames: that of the last message received, and
        #: before any, ``encoding`` (ATP-WS-010: a browser that offered no atp.v1 gets text)
        self._out_encoding = encoding
        self._closed: ConnectionClosed | None = None
        self._draining = False
        self._drain_retry_ms = 1000
        self._peer_draining = False
        self._heartbeat = heartbeat
        self._last_recv = now
        self._last_send = now
        #: True when :meth:`next_deadline` may have moved *earlier* since the I/O layer
        #: last cleared it (a stream got a TTL, or the last stream went and the idle
        #: timeout applies again). Deadlines that move later (traffic postpones the
        #: idle timeout and heartbeats) do not set it: a timer that fires early finds
        #: nothing due in :meth:`handle_timer` and asks again. An I/O layer may use it
        #: to avoid waking its timer after every message; ignoring it is always safe.
        self.timer_stale = True
        self._hb_sent_at: float | None = None
        # what the peer accepts from us (defaults until CAPABILITIES says otherwise)
        self.peer_caps: Mapping[str, Any] = {}
        self._peer = PeerCaps()
        self._frag_size = self._peer.frag_size
        self._peer_spoke_binary = False
        self._peer_sent_caps = False
        # ATP-FLOW-012: credit goes back once half the window is consumed. A router uses
        # at most the default window for that: a client may open streams before our
        # CAPABILITIES reach it, with the default as their credit (ATP-SESS-016).
        window = limits.initial_window
        if role is Role.ROUTER:
            window = min(window, DEFAULT_LIMITS.initial_window)
        self._ack_threshold = max(window // 2, 1)

    # ------------------------------------------------------------------ inspection

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def open_streams(self) -> int:
        """Streams tracked: open ones, and closed ones still flushing their outbox.

        All of them count against ``max_streams``, so a peer that never grants credit
        cannot make us hold unbounded closed streams.
        """
        return len(self._streams)

    def stream_state(self, stream_id: int) -> StreamState:
        rec = self._streams.get(stream_id)
        if rec is not None:
            return rec.state
        return StreamState.CLOSED if 0 < stream_id <= self._highest_id else StreamState.IDLE

    def send_credit(self, stream_id: int) -> int:
        """Bytes of DATA we may still send on the stream before the peer grants more."""
        rec = self._streams.get(stream_id)
        return rec.send.credit if rec is not None else 0

    def max_ext_len(self, stream_id: int) -> int:
        """The largest ext (encoded bytes) a message on the stream may carry: half the
        peer's initial window less the header (ATP-FLOW-014); 0 for an unknown stream."""
        rec = self._streams.get(stream_id)
        return max(0, rec.send.window // 2 - HEADER_SIZE) if rec is not None else 0

    def outbound_buffered(self, stream_id: int) -> int:
        """Bytes of DATA queued on the stream, waiting for credit."""
        rec = self._streams.get(stream_id)
        return rec.send.outbox_bytes if rec is not None else 0

    def budget_window(self, stream_id: int) -> BudgetWindow:
        """The stream's budget window as the wire set it: the SYN's ``window``, moved by
        the client's WINDOW_UPDATEs (the fields each names replace the old ones). The
        router's caps and usage are not here: they are its ledger's
        (``atp_proto.router.budget``)."""
        rec = self._streams.get(stream_id)
        return rec.window if rec is not None else BudgetWindow()

    def stream_encoding(self, stream_id: int) -> Encoding:
        """The stream's encoding (a stream not tracked: that of session-level frames)."""
        rec = self._streams.get(stream_id)
        return rec.encoding if rec is not None else self._out_encoding

    # the peer's limits (PeerCaps), by the names the send path reads
    @property
    def _peer_frame_size(self) -> int:
        return self._peer.frame_size

    @property
    def _peer_initial_window(self) -> int:
        return self._peer.initial_window

    @property
    def _peer_max_streams(self) -> int:
        return self._peer.max_streams

    # ------------------------------------------------------------------ errors

    def _stream_error(self, exc: ProtocolError, events: list[Event]) -> None:
        sid = exc.stream_id
        rec = self._streams.get(sid)
        encoding = rec.encoding if rec is not None else self._out_encoding
        message = _bounded(exc.message)
        # Queue (encode) before closing: closing a text stream retires its alias.
        self._queue(Frame.error(sid, exc.code, message, exc.retry_after_ms), encoding)
        if rec is None and exc.syn and sid > self._highest_id and self.role is Role.ROUTER:
            # ATP-STREAM-002: a refused SYN uses its id as an accepted one would (RFC 9113
            # §5.1.1): the same or a lower id is then EPROTO, whatever refused this one.
            self._highest_id = sid
            self.json.note_stream_id(sid)
        if rec is not None and rec.closed:
            # closed by our FIN, which still waits for credit in the outbox (a flushing
            # stream takes WINDOW_UPDATE, _is_gone): the ERROR ends it instead, so its
            # queued frames go (§7.1 "send RST/ERROR") and the FIN never follows the
            # ERROR (ATP-STREAM-011: exactly one ending)
            rec.send.clear()
            self._maybe_forget(rec)
        elif rec is not None:
            self._close_stream(rec, StreamInput.SEND_RST)
        elif encoding is _JSON:
            # A SYN refused under an alias still took its id, named to the client in
            # stream_num (ATP-JSON-016): the id is used, so no numeric SYN may take it
            # and a late frame on the alias stays on the closed stream (ATP-STREAM-002,
            # ATP-JSON-014). Found by the independent client (tests/indie).
            if self.json.allocated(sid) and sid > self._highest_id:
                self._highest_id = sid
            self.json.forget(sid)  # a refused SYN: its alias may be used again
        events.append(StreamReset(sid, str(exc.code), message, exc.retry_after_ms, by_peer=False))

    def _never_opened(self, what: str, sid: int) -> RemoteProtocolError:
        """The stream error for ``what`` on a stream never opened (ATP-STREAM-003). On an
        alias that names no stream it names the alias, not the id standing in for it: no
        id was allocated (ATP-JSON-013)."""
        alias = self.json.transient_alias(sid)
        where = (
            f"stream {sid}, which was never opened"
            if alias is None
            else f'alias "{alias}", which names no stream of the session'
        )
        return RemoteProtocolError(ErrorCode.EPROTO, f"{what} on {where}", stream_id=sid)

    def _connection_error(self, exc: ProtocolError, events: list[Event]) -> list[Event]:
        message = _bounded(exc.message)
        self._queue(Frame.error(0, exc.code, message, exc.retry_after_ms), self._out_encoding)
        self._closed = ConnectionClosed(str(exc.code), message, by_peer=False)
        self._streams.clear()
        events.append(self._closed)
        return events

    # ------------------------------------------------------------------ streams

    def _new_stream(self, sid: int, encoding: Encoding) -> Stream:
        text = encoding is _JSON
        peer_window = self._peer.initial_window
        if text and not self._peer_sent_caps:
            peer_window = _TEXT_PEER_WINDOW  # a browser that never sends WINDOW_UPDATE
        rec = Stream(
            sid,
            self.role,
            RecvWindow(
                _TEXT_PEER_WINDOW if text else self.limits.initial_window, self._ack_threshold
            ),
            SendWindow(peer_window),
            encoding,
        )
        self._streams[sid] = rec
        return rec

    def _close_stream(self, rec: Stream, inp: StreamInput) -> None:
        if rec.closed:
            return
        rec.apply(inp)
        if inp in _RESETS:
            rec.send.clear()
        self._maybe_forget(rec)

    def _is_gone(self, sid: int) -> bool:
        """The stream was opened and is closed now (its frames are discarded)."""
        rec = self._streams.get(sid)
        if rec is None:
            return sid <= self._highest_id
        return rec.closed and not rec.send.outbox  # one still flushing takes WINDOW_UPDATE

    def _maybe_forget(self, rec: Stream) -> None:
        """Drop a closed stream once its outbox is empty; its id stays 'closed' because
        ids only increase (frames for it are then discarded)."""
        if (
            rec.state is StreamState.CLOSED
            and not rec.send.outbox
            and self._streams.pop(rec.stream_id, None) is not None
        ):
            dec = self._channels.get(rec.stream_id)
            if dec is not None and not dec.buffered:
                # a decoder inside a frame stays until it ends, or the rest of that frame
                # would be read as new frames (ATP-QUIC-013: read and discard)
                del self._channels[rec.stream_id]
            if not self._streams:
                self.timer_stale = True  # the idle timeout applies again
            if rec.encoding is _JSON:
                self.json.forget(rec.stream_id)

    def _get_sendable(self, stream_id: int) -> Stream:
        rec = self._streams.get(stream_id)
        if self._closed is not None:
            raise LocalProtocolError(ErrorCode.EPROTO, "the connection is closed")
        if rec is None or not rec.can_send:
            state = rec.state.value if rec is not None else self.stream_state(stream_id).value
            raise StreamClosedError(
                ErrorCode.EPROTO,
                f"cannot send on stream {stream_id}: it is {state}",
                stream_id=stream_id,
            )
        return rec

    def _get_open(self, stream_id: int) -> Stream:
        rec = self._streams.get(stream_id)
        if self._closed is not None or rec is None or rec.closed:
            raise StreamClosedError(
                ErrorCode.EPROTO, f"stream {stream_id} is not open", stream_id=stream_id
            )
        return rec

    def _flush_outbox(self, rec: Stream) -> None:
        text_cost = self._text_frame_cost if rec.encoding is _JSON else None
        for frame in rec.send.sendable(text_cost):
            self._queue(frame, rec.encoding)
        if not rec.send.outbox:
            self._maybe_forget(rec)

    def _text_frame_cost(self, frame: Frame) -> int:
        """What a DATA frame costs on a text stream: the UTF-8 length of its JSON."""
        return _text_cost(self.json.encode(frame))

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application consumed ``size`` bytes of the stream's input.

        Credit is returned with WINDOW_UPDATE once half the initial window is consumed.
        """
        rec = self._streams.get(stream_id)
        if (
            rec is None
            or rec.closed
            or size <= 0
            or (rec.encoding is _JSON and not self._peer_sent_caps)
        ):
            return
        credit = rec.recv.acknowledge(size, may_grant=rec.receivable)
        if credit is not None:
            self._queue(Frame.window_update(stream_id, credit=credit), rec.encoding)

    # ------------------------------------------------------------------ session

    def _caps_frame(self) -> Frame:
        return Frame(FrameType.CAPABILITIES, 0, 0, ext={"caps": our_caps(self.limits)})

    # ------------------------------------------------------------------ output

    def _queue(self, frame: Frame, encoding: Encoding) -> None:
        # Encoded now, so a text reply carries the alias the stream had when it was sent.
        data = self.json.encode(frame) if encoding is _JSON else encode_frame(frame)
        self.frames_sent[frame.type] = self.frames_sent.get(frame.type, 0) + 1
        self._output.push(frame.stream_id, data, _ends_stream(frame))


def _ends_stream(frame: Frame) -> bool:
    """The frame is our last on its stream: FIN on a whole message or a last fragment,
    or RST (an ERROR on a stream carries RST)."""
    if not frame.stream_id:
        return False
    flags = frame.flags
    return bool(flags & RST_BIT) or (bool(flags & FIN_BIT) and not flags & CONT_BIT)


def _text_cost(text: str | bytes) -> int:
    """Credit cost of a DATA frame sent as text: the UTF-8 length of the whole text
    message, which any JSON client can count (ATP-FLOW-008)."""
    if isinstance(text, bytes):
        return len(text)
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
