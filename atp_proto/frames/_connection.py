"""The sans-IO ATP connection: bytes and time in, events and bytes out.

Theory of operation
-------------------
A :class:`Connection` is one side (client or router) of one ATP session. The I/O layer
feeds what it receives (:meth:`receive_data` for byte streams, :meth:`receive_message`
for a WebSocket binary message, :meth:`receive_text` for a WebSocket text message), each
with the current time, and gets back a list of :mod:`events <atp_proto.frames._events>`.
The application acts through methods (:meth:`open_stream`, :meth:`send_message`,
:meth:`send_error`, ...), which queue frames; the I/O layer drains them with
:meth:`data_to_send`, which coalesces consecutive binary frames into one buffer. Timers
(TTL, heartbeat, idle) work the same way: :meth:`next_deadline` says when to call
:meth:`handle_timer`. Nothing here reads a clock, sleeps, or does I/O.

Every protocol rule lives here once. A peer's stream-level violation queues an ERROR
frame for that stream and returns :class:`StreamReset` (``by_peer=False``); the session
goes on. A connection-level violation queues an ERROR on stream 0 and returns
:class:`ConnectionClosed`; afterwards all input is ignored. Nothing a peer sends raises
out of the ``receive_*`` methods, and every buffer is bounded by :class:`Limits`.

Flow control (ATP-FLOW): each stream has a credit window per direction, in bytes, where a
DATA frame costs its whole encoded length. Outbound DATA frames wait in the stream's
outbox until the peer's credit covers them (with more than half the peer's window left,
a frame that does not fit is cut to what does, ATP-FLOW-013, so that a peer returning
credit at half its window never deadlocks us); :meth:`outbound_buffered` lets the
application stop producing while a stream is blocked (this is what makes backpressure
reach the adapters). Inbound, credit is returned only for bytes the application has
consumed (:meth:`acknowledge`), once half the window is consumed (h2's hysteresis).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from ._budget import BudgetMixin, over_budget
from ._caps import PeerCaps, our_caps
from ._codec import HEADER, HEADER_SIZE, FrameDecoder, encode_ext, encode_frame
from ._errors import (
    BudgetExceeded,
    FrameDecodeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    StreamClosedError,
)
from ._events import (
    BudgetReported,
    CapabilitiesReceived,
    ConnectionClosed,
    Event,
    GoingAway,
    HeartbeatAcked,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from ._fragments import fragment
from ._frame import Frame
from ._json import JsonMapping
from ._output import WS_MESSAGE_SLACK, Output
from ._state import Role, StreamInput, StreamState
from ._stream import Stream
from ._timers import due, expired, next_deadline
from ._types import (
    ACK_BIT,
    CONT_BIT,
    DEFAULT_LIMITS,
    FIN_BIT,
    MAX_STREAM_ID,
    MAX_WINDOW,
    RST_BIT,
    SYN_BIT,
    U32_MAX,
    VERSION,
    BudgetWindow,
    Encoding,
    ErrorCode,
    Flags,
    FrameType,
    Limits,
    QoS,
)
from ._validate import validate_frame
from ._windows import RecvWindow, SendWindow

__all__ = ["BudgetExceeded", "Connection", "Role"]

_TEXT_PEER_WINDOW: Final = MAX_WINDOW
_HEADER_PACK: Final = HEADER.pack
_JSON: Final = Encoding.JSON
_BINARY: Final = Encoding.BINARY
_NO_EXT: Final[Mapping[str, Any]] = {}
_RESETS: Final = (StreamInput.SEND_RST, StreamInput.RECV_RST)

_Handler = Callable[[Frame, int, float, list[Event], Encoding], None]


class Connection(BudgetMixin):
    """One side of an ATP session, with no I/O (see the module docstring).

    Args:
        role: ``Role.CLIENT`` opens streams; ``Role.ROUTER`` accepts them.
        limits: what we accept from the peer, advertised in CAPABILITIES.
        now: the current time in seconds (any monotonic origin).
        heartbeat: send HB after this many seconds without sending (None: never).
        encoding: of session-level frames until the peer speaks (ATP-WS-010).
        text: ``encoding=Encoding.JSON`` as a bool (# compat: removed at merge).
    """

    def __init__(
        self,
        role: Role,
        *,
        limits: Limits = DEFAULT_LIMITS,
        now: float = 0.0,
        heartbeat: float | None = None,
        encoding: Encoding = Encoding.BINARY,
        text: bool = False,
    ) -> None:
        self.role = role
        self.limits = limits
        self.json = JsonMapping(limits)
        self._decoder = FrameDecoder(limits)
        self._streams: dict[int, Stream] = {}
        self._highest_id = 0
        self._output = Output()
        #: frames handled, by frame type value: for metrics (received / sent)
        self.frames_received: dict[int, int] = {}
        self.frames_sent: dict[int, int] = {}
        #: encoding of session-level frames: that of the last message received, and
        #: before any, ``encoding`` (ATP-WS-010: a browser that offered no atp.v1 gets text)
        self._out_encoding = _JSON if text else encoding
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
        # h2's "when in doubt use dict-dispatch"; an unknown type is ignored (ATP-EXT)
        self._handlers: dict[int, _Handler] = {
            FrameType.DATA: self._handle_data,
            FrameType.WINDOW_UPDATE: self._handle_window_update,
            FrameType.ERROR: self._handle_error,
            FrameType.CAPABILITIES: self._handle_capabilities,
            FrameType.BUDGET_UPDATE: self._handle_budget_update,
        }

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

    def outbound_buffered(self, stream_id: int) -> int:
        """Bytes of DATA queued on the stream, waiting for credit."""
        rec = self._streams.get(stream_id)
        return rec.send.outbox_bytes if rec is not None else 0

    def stream_encoding(self, stream_id: int) -> Encoding:
        """The stream's encoding (a stream not tracked: that of session-level frames)."""
        rec = self._streams.get(stream_id)
        return rec.encoding if rec is not None else self._out_encoding

    def is_text(self, stream_id: int) -> bool:
        """``stream_encoding(stream_id) is Encoding.JSON``.  # compat: removed at merge"""
        return self.stream_encoding(stream_id) is _JSON

    # compat: the peer's limits as they were named before PeerCaps (removed at merge)
    @property
    def _peer_frame_size(self) -> int:
        return self._peer.frame_size

    @property
    def _peer_initial_window(self) -> int:
        return self._peer.initial_window

    @property
    def _peer_max_streams(self) -> int:
        return self._peer.max_streams

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Bytes from a byte-stream transport (QUIC stream, TCP): any chunking."""
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
        self._drain_decoder(now, events)
        return events

    def receive_message(self, data: bytes, now: float) -> list[Event]:
        """One WebSocket binary message: one or more whole frames."""
        events = self.receive_data(data, now)
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
                version, ftype, _, _, sid, _, _, _, ext_len, pay_len = HEADER.unpack_from(prefix)
                lim = self.limits
                body = ext_len + pay_len
                if (
                    version == VERSION
                    and sid
                    and (body > lim.max_frame_size or ext_len > lim.max_ext_size)
                ):
                    self.frames_received[ftype] = self.frames_received.get(ftype, 0) + 1
                    self._stream_error(
                        RemoteProtocolError(
                            ErrorCode.ETOOBIG,
                            f"frame body of {body} bytes exceeds max_frame_size "
                            f"{lim.max_frame_size}",
                            stream_id=sid,
                        ),
                        events,
                    )
                    return events
        return self._connection_error(
            RemoteProtocolError(
                ErrorCode.ETOOBIG, f"{what} larger than {limit} bytes (the binding's limit)"
            ),
            events,
        )

    def _drain_decoder(self, now: float, events: list[Event]) -> None:
        dec = self._decoder
        while self._closed is None:
            start = dec.buffered
            try:
                frame = dec.next_frame()
                if frame is None:
                    return
                cost = start - dec.buffered
                self._handle_frame(frame, cost, now, events, _BINARY)
            except RemoteProtocolError as exc:
                if exc.stream_id:
                    self._stream_error(exc, events)
                else:
                    self._connection_error(exc, events)
            except Exception as exc:  # pragma: no cover - nothing may escape the core
                self._internal_error(exc, events)

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
                if exc.stream_id and not frame.flags & SYN_BIT and self._is_gone(exc.stream_id):
                    return  # ATP-FLAG-004: a frame for a closed stream is discarded
                raise
        handler = self._handlers.get(ftype)
        if handler is None:
            events.append(UnknownFrameReceived(frame))  # ATP-EXT: ignore unknown types
        else:
            handler(frame, cost, now, events, encoding)

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
            raise RemoteProtocolError(
                ErrorCode.EPROTO, f"DATA on stream {sid}, which was never opened", stream_id=sid
            )
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
            raise RemoteProtocolError(
                ErrorCode.EPROTO, f"WINDOW_UPDATE on stream {sid}, never opened", stream_id=sid
            )
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
            # the client may move its window, never past the router's cap (ATP-BUDGET-001)
            rec.window = rec.window.merged(window).clamp(rec.cap)
            over = over_budget(rec)
            if over is not None:
                raise RemoteProtocolError(over[0], over[1], stream_id=sid)
        events.append(WindowUpdated(sid, rec.send.credit, window))
        self._maybe_forget(rec)

    def _handle_budget_update(
        self, frame: Frame, cost: int, now: float, events: list[Event], encoding: Encoding
    ) -> None:
        sid = frame.stream_id
        if self.role is Role.ROUTER:
            raise RemoteProtocolError(
                ErrorCode.EPROTO, "BUDGET_UPDATE is sent by the router only", stream_id=sid
            )
        rec = self._streams.get(sid)
        usage = frame.ext.get("usage")
        if rec is not None and isinstance(usage, Mapping):
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

    # ------------------------------------------------------------------ errors

    def _stream_error(self, exc: ProtocolError, events: list[Event]) -> None:
        sid = exc.stream_id
        rec = self._streams.get(sid)
        encoding = rec.encoding if rec is not None else self._out_encoding
        # Queue (encode) before closing: closing a text stream retires its alias.
        self._queue(Frame.error(sid, exc.code, exc.message, exc.retry_after_ms), encoding)
        if rec is not None:
            self._close_stream(rec, StreamInput.SEND_RST)
        elif encoding is _JSON:
            self.json.forget(sid)  # a refused SYN: its alias may be used again
        events.append(
            StreamReset(sid, str(exc.code), exc.message, exc.retry_after_ms, by_peer=False)
        )

    def _connection_error(self, exc: ProtocolError, events: list[Event]) -> list[Event]:
        self._queue(Frame.error(0, exc.code, exc.message, exc.retry_after_ms), self._out_encoding)
        self._closed = ConnectionClosed(str(exc.code), exc.message, by_peer=False)
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

    # ------------------------------------------------------------------ sending

    def open_stream(
        self,
        payload: bytes = b"",
        *,
        stream_id: int | None = None,
        msg_seq: int = 1,
        qos: QoS = QoS.UNSPECIFIED,
        ttl: int = 0,
        window: BudgetWindow | None = None,
        meta: Mapping[str, Any] | None = None,
        end_stream: bool = False,
        encoding: Encoding = Encoding.BINARY,
        text: bool = False,
        now: float | None = None,
    ) -> int:
        """Open a stream with a SYN (client only). Returns its stream id.

        ``text=True`` is ``encoding=Encoding.JSON`` (# compat: removed at merge).

        Raises:
            LocalProtocolError: not a client, the router is draining, the stream id does
                not increase, or the peer's ``max_streams`` would be exceeded.
        """
        if self.role is not Role.CLIENT:
            raise LocalProtocolError(ErrorCode.EPROTO, "only clients open streams")
        if self._closed is not None:
            raise LocalProtocolError(ErrorCode.EPROTO, "the connection is closed")
        if self._peer_draining:
            raise LocalProtocolError(ErrorCode.EDRAINING, "the router is draining")
        if text:
            encoding = _JSON
        sid = self._highest_id + 1 if stream_id is None else stream_id
        if not self._highest_id < sid <= MAX_STREAM_ID:
            raise LocalProtocolError(
                ErrorCode.EPROTO, f"stream id {sid} must exceed {self._highest_id}"
            )
        if len(self._streams) >= self._peer.max_streams:
            raise LocalProtocolError(
                ErrorCode.EWINDOW, f"the peer allows {self._peer.max_streams} concurrent streams"
            )
        self._highest_id = sid
        if encoding is _JSON:
            self.json.note_stream_id(sid)
        rec = self._new_stream(sid, encoding)
        rec.apply(StreamInput.SEND_SYN)
        rec.send_seq = msg_seq
        rec.recv_seq = msg_seq + 1
        rec.qos = qos
        if window is not None:
            rec.window = window
        if ttl and now is not None:
            rec.deadline = now + ttl
            self.timer_stale = True
        ext: dict[str, Any] = {}
        if window is not None:
            ext["window"] = window.to_dict()
        if meta is not None:
            ext["meta"] = dict(meta)
        self._send_data(rec, payload, SYN_BIT, ext, qos=qos, ttl=ttl, fin=end_stream)
        return sid

    def send_message(
        self,
        stream_id: int,
        payload: bytes | memoryview,
        *,
        more: bool = False,
        end_stream: bool = False,
        ext: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one message (fragmented to the peer's max_frame_size as needed).

        The frames leave as credit allows; watch :meth:`outbound_buffered` to stop
        producing while the peer is not reading.

        Raises:
            StreamClosedError: the stream cannot send (closed, half-closed, unknown).
        """
        rec = self._streams.get(stream_id)
        # Fast path (the router's PARTIALs): a binary stream that can send, one fragment,
        # no ext, credit available, nothing queued before it. Same bytes as the general
        # path (tests/frames/test_fast_paths.py holds them to it), without building and
        # validating a Frame (ATP-FLOW, ATP-SEQ still hold).
        if (
            rec is not None
            and rec.sendable
            and not end_stream
            and not ext
            and rec.encoding is _BINARY
            and not rec.send.outbox
            and self._closed is None
        ):
            n = len(payload)
            cost = HEADER_SIZE + n
            window = rec.send
            if cost <= window.credit and n <= self._frag_size and rec.send_seq < U32_MAX:
                seq = rec.send_seq
                rec.send_seq = seq + 1
                window.credit -= cost
                header = _HEADER_PACK(
                    VERSION, 0, Flags.MORE if more else 0, 0, stream_id, seq, 0, 0, 0, n
                )
                self._output.push(stream_id, header + payload, False)
                sent = self.frames_sent
                sent[FrameType.DATA] = sent.get(FrameType.DATA, 0) + 1
                return
        self.send_message_general(stream_id, payload, more=more, end_stream=end_stream, ext=ext)

    def send_message_general(
        self,
        stream_id: int,
        payload: bytes | memoryview,
        *,
        more: bool = False,
        end_stream: bool = False,
        ext: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`send_message` without its fast path (every rule, every message)."""
        rec = self._get_sendable(stream_id)
        self._send_data(
            rec, payload, Flags.MORE if more else 0, dict(ext) if ext else {}, fin=end_stream
        )

    def _send_data(
        self,
        rec: Stream,
        payload: bytes | memoryview,
        flags: int,
        ext: dict[str, Any],
        *,
        qos: int = 0,
        ttl: int = 0,
        fin: bool = False,
    ) -> None:
        ext_len = len(encode_ext(ext)) if ext else 0
        window = rec.send.window
        if HEADER_SIZE + ext_len > window // 2:
            # ATP-FLOW-014: a first fragment that cannot fit half the peer's window might
            # wait forever for credit a conformant receiver never has to return.
            raise LocalProtocolError(
                ErrorCode.ETOOBIG,
                f"an ext of {ext_len} bytes does not fit half the peer's initial_window "
                f"({window}): at most {window // 2 - HEADER_SIZE} bytes",
                stream_id=rec.stream_id,
            )
        if fin:
            rec.apply(StreamInput.SEND_FIN)
        elif not flags & SYN_BIT:
            rec.apply(StreamInput.SEND_DATA)
        seq = rec.send_seq
        if seq > U32_MAX or (seq == U32_MAX and not fin):
            # ATP-SEQ-005: end the stream rather than wrap; the last number carries FIN
            raise LocalProtocolError(
                ErrorCode.EPROTO,
                "msg_seq would wrap: end the stream (FIN) with this message",
                stream_id=rec.stream_id,
            )
        rec.send_seq = seq + 1
        sid = rec.stream_id
        if rec.encoding is _JSON:  # ATP-FLOW-008: text frames cost their UTF-8 length
            items = self._text_fragments(sid, payload, flags, ext, ext_len, seq, qos, ttl, fin)
        else:
            frames = fragment(
                sid, seq, payload, flags, ext, ext_len, self._frag_size, qos=qos, ttl=ttl, fin=fin
            )
            items = [(f, HEADER_SIZE + len(f.payload)) for f in frames]
            if ext_len:
                items[0] = (frames[0], items[0][1] + ext_len)
        for frame, cost in items:
            rec.send.push(frame, cost)
        self._flush_outbox(rec)

    def _text_fragments(
        self,
        sid: int,
        payload: bytes | memoryview,
        flags: int,
        ext: dict[str, Any],
        ext_len: int,
        seq: int,
        qos: int,
        ttl: int,
        fin: bool,
    ) -> list[tuple[Frame, int]]:
        """The frames of one message on a text stream, each with its cost: the UTF-8
        length of its text (ATP-FLOW-008). JSON can be longer than CBOR (base64, escapes):
        when the peer limits credit, fragments shrink until each text frame fits as a
        binary one would (ATP-FLOW-001: a frame larger than the window never leaves)."""
        frag = self._frag_size
        limit = frag + HEADER_SIZE
        if self.json.take_announcement(sid):  # the first DATA under an alias
            ext = {**ext, "stream_num": sid}  # ATP-JSON-016
        while True:
            frames = fragment(
                sid, seq, payload, flags, ext, ext_len, frag, qos=qos, ttl=ttl, fin=fin
            )
            built = [(f, self._text_frame_cost(f)) for f in frames]
            if not self._peer_sent_caps:
                return built  # a browser's credit is unlimited (ATP-FLOW-007)
            worst = max(c for _, c in built)
            if worst <= limit or frag <= 64:
                return built
            frag = max(frag * limit // worst - 64, 64)

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

    def update_window(self, stream_id: int, window: BudgetWindow) -> None:
        """Change the stream's budget window mid-flight (client), via WINDOW_UPDATE."""
        rec = self._get_open(stream_id)
        rec.window = rec.window.merged(window)
        self._queue(Frame.window_update(stream_id, window=window), rec.encoding)

    def send_budget_update(self, stream_id: int, usage: Mapping[str, Any]) -> None:
        """Report usage so far to the client (router), via BUDGET_UPDATE."""
        rec = self._get_open(stream_id)
        self._queue(
            Frame(FrameType.BUDGET_UPDATE, 0, stream_id, ext={"usage": dict(usage)}), rec.encoding
        )

    def send_error(
        self,
        stream_id: int,
        code: ErrorCode | str,
        message: str,
        retry_after_ms: int | None = None,
    ) -> None:
        """End a stream with an ERROR frame (no-op when it is already closed)."""
        rec = self._streams.get(stream_id)
        if self._closed is not None or rec is None or rec.closed:
            return
        self._queue(Frame.error(stream_id, code, message, retry_after_ms), rec.encoding)
        self._close_stream(rec, StreamInput.SEND_RST)

    def reset_stream(self, stream_id: int) -> None:
        """Abandon a stream (RST, no error detail): a client's cancel."""
        rec = self._streams.get(stream_id)
        if self._closed is not None or rec is None or rec.closed:
            return
        self._queue(Frame(FrameType.DATA, Flags.RST, stream_id, rec.send_seq), rec.encoding)
        self._close_stream(rec, StreamInput.SEND_RST)

    # ------------------------------------------------------------------ session

    def _caps_frame(self) -> Frame:
        return Frame(FrameType.CAPABILITIES, 0, 0, ext={"caps": our_caps(self.limits)})

    def send_capabilities(
        self, *, encoding: Encoding = Encoding.BINARY, text: bool = False
    ) -> None:
        """Send our CAPABILITIES (clients: as the first frame; the router answers).

        ``text=True`` is ``encoding=Encoding.JSON`` (# compat: removed at merge)."""
        self._queue(self._caps_frame(), _JSON if text else encoding)

    def send_heartbeat(self, now: float, payload: bytes = b"") -> None:
        if self._closed is None:
            self._hb_sent_at = now
            self._queue(Frame(FrameType.DATA, Flags.HB, 0, payload=payload), self._out_encoding)

    def start_drain(
        self, message: str = "the router is shutting down", retry_after_ms: int = 1000
    ) -> None:
        """Stop accepting streams (router): new SYNs get EDRAINING; open ones go on."""
        if self._draining or self._closed is not None:
            return
        self._draining = True
        self._drain_retry_ms = retry_after_ms
        self._queue(
            Frame.error(0, ErrorCode.EDRAINING, message, retry_after_ms), self._out_encoding
        )

    def close(self, code: ErrorCode | str = ErrorCode.EDRAINING, message: str = "closing") -> None:
        """Close the connection with a connection-level ERROR frame."""
        if self._closed is not None:
            return
        self._queue(Frame.error(0, code, message), self._out_encoding)
        self._closed = ConnectionClosed(str(code), message, by_peer=False)
        self._streams.clear()

    # ------------------------------------------------------------------ time

    def _timer_args(self) -> dict[str, Any]:
        return {
            "open_streams": len(self._streams),
            "last_recv": self._last_recv,
            "last_send": self._last_send,
            "heartbeat": self._heartbeat,
            "idle_timeout_ms": self.limits.idle_timeout_ms,
        }

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: nothing pending)."""
        if self._closed is not None:
            return None
        return next_deadline(self._streams.values(), **self._timer_args())

    def handle_timer(self, now: float) -> list[Event]:
        """Fire what is due at ``now``: stream TTLs, heartbeats, the idle timeout."""
        events: list[Event] = []
        if self._closed is not None:
            return events
        for sid in expired(self._streams.values(), now):
            msg = "the stream's ttl passed"
            self.send_error(sid, ErrorCode.ETIMEOUT, msg)
            events.append(StreamReset(sid, ErrorCode.ETIMEOUT, msg, by_peer=False))
        what = due(now, **self._timer_args())
        if what.idle:
            self._connection_error(
                RemoteProtocolError(
                    ErrorCode.ETIMEOUT,
                    f"idle for {self.limits.idle_timeout_ms} ms with no open stream",
                ),
                events,
            )
            return events
        if what.heartbeat:
            self.send_heartbeat(now)
        return events

    # ------------------------------------------------------------------ output

    def _queue(self, frame: Frame, encoding: Encoding) -> None:
        # Encoded now, so a text reply carries the alias the stream had when it was sent.
        data = self.json.encode(frame) if encoding is _JSON else encode_frame(frame)
        self.frames_sent[frame.type] = self.frames_sent.get(frame.type, 0) + 1
        self._output.push(frame.stream_id, data, _ends_stream(frame))

    def has_data_to_send(self) -> bool:
        return bool(self._output.items)

    @property
    def queued_bytes(self) -> int:
        """Size of what :meth:`data_to_send` would return now (text counted in chars)."""
        return self._output.size

    @property
    def peer_message_limit(self) -> int:
        """The largest binary WebSocket message the peer must accept: its max_frame_size
        plus 65,536 (ATP-WS-011), which one whole frame always fits."""
        return self._peer.frame_size + WS_MESSAGE_SLACK

    def data_to_send(
        self, now: float | None = None, *, max_message: int | None = None
    ) -> list[bytes | str]:
        """Everything queued: consecutive binary frames coalesced into as few ``bytes`` as
        fit ``max_message`` (default :attr:`peer_message_limit`; one WebSocket message /
        one write each), each text frame one ``str``. A frame larger than the cap goes
        alone (it still fits the peer's max_frame_size); a frame is never split.

        Pass ``now`` so that the heartbeat timer knows when we last sent.
        """
        if not self._output.items:
            return []
        if now is not None:
            self._last_send = now
        cap = self.peer_message_limit if max_message is None else max_message
        return self._output.coalesced(cap)

    def stream_data_to_send(self, now: float | None = None) -> list[tuple[int, bytes, bool]]:
        """Everything queued, per ATP stream (the view a QUIC binding writes, ATP-QUIC-005/
        006): ``(stream_id, bytes, end_stream)`` items in queue order, consecutive frames
        of one stream joined; ``end_stream`` is True after the stream's last frame (our
        FIN, or an RST/ERROR ending it). Stream 0 is the control stream. Binary only: a
        JSON frame cannot be carried this way (ATP-QUIC-003).

        Raises:
            LocalProtocolError: a JSON frame is queued.
        """
        if not self._output.items:
            return []
        if now is not None:
            self._last_send = now
        return self._output.per_stream()


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
