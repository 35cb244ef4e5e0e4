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

from collections.abc import Mapping
from typing import Any, Final, TypeGuard

from ._codec import HEADER, HEADER_SIZE, FrameDecoder, encode_ext, encode_frame
from ._errors import (
    ATPError,
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
    MessageReceived,
    StreamOpened,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from ._frame import Frame, Payload
from ._json import JsonMapping
from ._stream import Role, StreamInput, StreamRecord, StreamState
from ._types import (
    DEFAULT_LIMITS,
    MAX_STREAM_ID,
    MAX_WINDOW,
    U32_MAX,
    VERSION,
    BudgetWindow,
    ErrorCode,
    Flags,
    FrameType,
    Limits,
    QoS,
)
from ._validate import validate_frame

__all__ = ["BudgetExceeded", "Connection", "Role"]

_TEXT_PEER_WINDOW: Final = MAX_WINDOW
_HEADER_PACK: Final = HEADER.pack
# Flag bits as plain ints: ``int & IntFlag`` runs IntFlag's Python-level operator (~1 µs).
_SYN: Final = int(Flags.SYN)
_ACK: Final = int(Flags.ACK)
_MORE: Final = int(Flags.MORE)
_FIN: Final = int(Flags.FIN)
_RST: Final = int(Flags.RST)
_HB: Final = int(Flags.HB)
_CONT: Final = int(Flags.CONT)
_SLOW_FLAGS: Final = _SYN | _RST | _CONT
_NO_EXT: Final[Mapping[str, Any]] = {}
_FEATURES: Final = ("json", "fragmentation", "budget", "heartbeat")
#: A binary WebSocket message may be this much larger than max_frame_size (ATP-WS-011):
#: room for a frame's header and ext, and for coalescing small frames.
WS_MESSAGE_SLACK: Final = 65536


class BudgetExceeded(ATPError):
    """Charging usage would exceed the stream's budget window (EBUDGET / EWINDOW)."""


class Connection:
    """One side of an ATP session, with no I/O (see the module docstring).

    Args:
        role: ``Role.CLIENT`` opens streams; ``Role.ROUTER`` accepts them.
        limits: what we accept from the peer, advertised in CAPABILITIES.
        now: the current time in seconds (any monotonic origin).
        heartbeat: send HB after this many seconds without sending (None: never).
    """

    def __init__(
        self,
        role: Role,
        *,
        limits: Limits = DEFAULT_LIMITS,
        now: float = 0.0,
        heartbeat: float | None = None,
        text: bool = False,
    ) -> None:
        self.role = role
        self.limits = limits
        self.json = JsonMapping(limits)
        self._decoder = FrameDecoder(limits)
        self._streams: dict[int, StreamRecord] = {}
        self._highest_id = 0
        self._out: list[bytes | str] = []
        self._out_bytes = 0
        #: frames handled, by frame type value: for metrics (received / sent)
        self.frames_received: dict[int, int] = {}
        self.frames_sent: dict[int, int] = {}
        #: encoding of session-level frames: that of the last message received, and
        #: before any, ``text`` (ATP-WS-010: a browser that offered no atp.v1 gets text)
        self._out_text = text
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
        self._peer_frame_size = DEFAULT_LIMITS.max_frame_size
        self._peer_initial_window = DEFAULT_LIMITS.initial_window
        self._frag_size = _frag_size(self._peer_frame_size, self._peer_initial_window)
        self._peer_max_streams = DEFAULT_LIMITS.max_streams
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
        return rec.send_credit if rec is not None else 0

    def outbound_buffered(self, stream_id: int) -> int:
        """Bytes of DATA queued on the stream, waiting for credit."""
        rec = self._streams.get(stream_id)
        return rec.outbox_bytes if rec is not None else 0

    def budget_window(self, stream_id: int) -> BudgetWindow:
        rec = self._streams.get(stream_id)
        return rec.window if rec is not None else BudgetWindow()

    def is_text(self, stream_id: int) -> bool:
        rec = self._streams.get(stream_id)
        return rec.text if rec is not None else self._out_text

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Bytes from a byte-stream transport (QUIC stream, TCP): any chunking."""
        if self._closed is not None:
            return []
        self._last_recv = now
        self._peer_spoke_binary = True
        self._out_text = False
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
        self._out_text = True
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
            self._handle_frame(frame, cost, now, events, text=True)
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
            self._out_text = True
            what = "text message"
        else:
            self._peer_spoke_binary = True
            self._out_text = False
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
                self._handle_frame(frame, cost, now, events, text=False)
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
        self, frame: Frame, cost: int, now: float, events: list[Event], *, text: bool
    ) -> None:
        ftype = frame.type
        self.frames_received[ftype] = self.frames_received.get(ftype, 0) + 1
        sid = frame.stream_id
        if ftype or not sid or frame.ext:  # a PARTIAL / input without ext has no such rule
            try:
                validate_frame(frame, self.limits)  # the rules that need no state
            except RemoteProtocolError as exc:
                if exc.stream_id and not frame.flags & _SYN and self._is_gone(exc.stream_id):
                    return  # ATP-FLAG-004: a frame for a closed stream is discarded
                raise
        if ftype == FrameType.DATA:
            if sid == 0:
                self._handle_heartbeat(frame, now, events)
            else:
                self._handle_data(frame, cost, now, events, text)
        elif ftype == FrameType.WINDOW_UPDATE:
            self._handle_window_update(frame, events)
        elif ftype == FrameType.ERROR:
            self._handle_error(frame, events)
        elif ftype == FrameType.CAPABILITIES:
            self._handle_capabilities(frame, events, text)
        elif ftype == FrameType.BUDGET_UPDATE:
            if self.role is Role.ROUTER:
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "BUDGET_UPDATE is sent by the router only", stream_id=sid
                )
            rec = self._streams.get(sid)
            usage = frame.ext.get("usage")
            if rec is not None and isinstance(usage, Mapping):
                events.append(BudgetReported(sid, usage))
        else:
            events.append(UnknownFrameReceived(frame))  # ATP-EXT: ignore unknown types

    # -- DATA ---------------------------------------------------------------------

    def _handle_data(
        self, frame: Frame, cost: int, now: float, events: list[Event], text: bool
    ) -> None:
        sid = frame.stream_id
        flags = frame.flags
        rec = self._streams.get(sid)
        # Fast path (PARTIALs at the client, input at the router): a whole, in-order
        # message without ext on a stream that can receive, within credit. The general
        # path below enforces the same rules; this only skips work that cannot apply.
        if (
            rec is not None
            and not flags & _SLOW_FLAGS
            and rec.receivable
            and rec.frag_next == 0
            and frame.msg_seq == rec.recv_seq
            and frame.frag_seq == 0
            and not frame.ext
            and cost <= rec.recv_credit
        ):
            rec.recv_credit -= cost
            rec.recv_seq = frame.msg_seq + 1  # never wraps (ATP-SEQ-005)
            fin = bool(flags & _FIN)
            events.append(
                MessageReceived(
                    sid,
                    frame.msg_seq,
                    frame.payload,
                    _NO_EXT,
                    more=bool(flags & _MORE),
                    end_stream=fin,
                    size=cost,
                )
            )
            if fin:
                rec.apply(StreamInput.RECV_FIN)
                self._maybe_forget(rec)
            return
        if flags & _RST:
            # ATP-FLAG: RST aborts the stream now, whatever its sequence or credit.
            if rec is not None and not rec.closed:
                self._close_stream(rec, StreamInput.RECV_RST)
                events.append(StreamReset(sid, "RST", "stream reset by the peer", by_peer=True))
            elif rec is not None:
                rec.outbox.clear()
                rec.outbox_bytes = 0
                self._maybe_forget(rec)
            return
        syn = bool(flags & _SYN)
        if rec is None:
            if not syn:
                if sid <= self._highest_id:
                    return  # closed stream: discard (races with RST / FIN)
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, f"DATA on stream {sid}, which was never opened", stream_id=sid
                )
            if self.role is not Role.ROUTER:
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "only clients open streams", stream_id=sid
                )
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
            rec = self._new_stream(sid, text=text)
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
        elif syn:
            raise RemoteProtocolError(
                ErrorCode.EPROTO, f"SYN on stream {sid}, which is already open", stream_id=sid
            )
        elif not rec.can_receive:
            if rec.closed:
                return  # closed but still flushing our outbox: discard
            raise RemoteProtocolError(
                ErrorCode.EPROTO,
                f"DATA on stream {sid} after the peer's FIN ({rec.state.value})",
                stream_id=sid,
            )

        # credit (ATP-FLOW): the frame costs its whole encoded length
        if cost > rec.recv_credit:
            raise RemoteProtocolError(
                ErrorCode.EWINDOW,
                f"DATA frame of {cost} bytes exceeds the credit window ({rec.recv_credit} left)",
                stream_id=sid,
            )
        rec.recv_credit -= cost

        # sequencing (ATP-SEQ); recv_seq is set when the stream opens, on both sides
        if frame.msg_seq != rec.recv_seq or frame.frag_seq != rec.frag_next:
            raise RemoteProtocolError(
                ErrorCode.ESEQ_RETRY,
                f"expected msg_seq {rec.recv_seq} frag_seq {rec.frag_next}, got "
                f"msg_seq {frame.msg_seq} frag_seq {frame.frag_seq}",
                stream_id=sid,
                retry_after_ms=0,
            )
        if rec.frag_next == 0:
            rec.frag_flags = flags
            rec.frag_ext = dict(frame.ext) if frame.ext else None
        else:
            if frame.ext:
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "ext is allowed on the first fragment only", stream_id=sid
                )
            if syn:  # pragma: no cover - unreachable: a SYN on a known stream is refused above
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "SYN is allowed on the first fragment only", stream_id=sid
                )
            rec.frag_flags |= flags
        if flags & _CONT:
            if flags & _FIN:
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "FIN is allowed on the last fragment only", stream_id=sid
                )
            if rec.frag_next >= 0xFFFF:
                raise RemoteProtocolError(
                    ErrorCode.ETOOBIG, "message has more than 65536 fragments", stream_id=sid
                )
        size = rec.frag_bytes + len(frame.payload)
        if size > self.limits.max_message_size:
            raise RemoteProtocolError(
                ErrorCode.ETOOBIG,
                f"message of more than {self.limits.max_message_size} bytes (max_message_size)",
                stream_id=sid,
            )
        rec.frag_bytes = size
        if frame.payload:
            if flags & _CONT or rec.frag_next:
                # A fragment: copy. A view would keep its whole received message alive (a
                # frame of max_frame_size per one-byte fragment), outside max_message_size.
                rec.frag_parts.append(bytes(frame.payload))
            else:  # a whole message in one frame: keep the zero-copy view
                rec.frag_parts.append(frame.payload)
        if flags & _CONT:
            rec.frag_next += 1
            # The reassembly buffer (bounded by max_message_size) consumes fragments, so
            # their credit goes back at once; otherwise a message larger than the window
            # could never complete.
            self.acknowledge(sid, cost)
            return
        rec.frag_cost = cost

        # a whole message
        parts = rec.frag_parts
        payload: Payload
        if not parts:
            payload = b""
        elif len(parts) == 1:
            payload = parts[0]
        else:
            payload = b"".join(parts)
        mflags = rec.frag_flags
        ext: Mapping[str, Any] = rec.frag_ext or {}
        msg_seq = rec.recv_seq
        msg_cost = rec.frag_cost
        rec.frag_parts = []
        rec.frag_bytes = rec.frag_cost = rec.frag_next = 0
        rec.frag_ext = None
        rec.recv_seq = msg_seq + 1
        fin = bool(mflags & _FIN)
        if mflags & _SYN:
            meta = ext.get("meta")
            events.append(
                StreamOpened(
                    sid,
                    msg_seq,
                    _unpinned(payload),  # held for the stream's life: do not pin the message
                    rec.qos,
                    frame.ttl,
                    rec.window,
                    meta if isinstance(meta, Mapping) else {},
                    ext,
                    text=rec.text,
                    end_stream=fin,
                )
            )
            # The SYN's credit is consumed by opening; return it at once.
            self.acknowledge(sid, msg_cost)
        else:
            events.append(
                MessageReceived(
                    sid,
                    msg_seq,
                    payload,
                    ext,
                    more=bool(mflags & _MORE),
                    end_stream=fin,
                    size=msg_cost,
                )
            )
        if fin:
            rec.apply(StreamInput.RECV_FIN)
            self._maybe_forget(rec)

    def _handle_heartbeat(self, frame: Frame, now: float, events: list[Event]) -> None:
        # HB set and the payload size: checked by validate_frame (ATP-FRAME-011)
        if frame.flags & _ACK:
            if self._hb_sent_at is not None:
                events.append(HeartbeatAcked(now - self._hb_sent_at))
                self._hb_sent_at = None
            return
        self._queue(
            Frame(FrameType.DATA, Flags.HB | Flags.ACK, 0, payload=bytes(frame.payload)),
            self._out_text,
        )

    # -- control --------------------------------------------------------------------

    def _handle_window_update(self, frame: Frame, events: list[Event]) -> None:
        sid = frame.stream_id  # not 0, credit and window well formed: validate_frame
        rec = self._streams.get(sid)
        if rec is None:
            if sid <= self._highest_id:
                return  # closed stream
            raise RemoteProtocolError(
                ErrorCode.EPROTO, f"WINDOW_UPDATE on stream {sid}, never opened", stream_id=sid
            )
        if rec.closed and not rec.outbox:
            return
        credit = frame.ext.get("credit")
        if credit is not None:
            if rec.text and not self._peer_sent_caps:
                credit = 0  # ATP-FLOW-007: its credit is already unlimited; nothing to add
            elif rec.send_credit + credit > MAX_WINDOW:
                raise RemoteProtocolError(
                    ErrorCode.EWINDOW,
                    f"credit window would exceed 2^31-1 ({rec.send_credit} + {credit})",
                    stream_id=sid,
                )
            rec.send_credit += credit
            self._flush_outbox(rec)
        window = frame.budget_window
        if window is not None and self.role is Role.ROUTER:
            # the client may move its window, never past the router's cap (ATP-BUDGET-001)
            rec.window = rec.window.merged(window).clamp(rec.cap)
            over = _over_budget(rec)
            if over is not None:
                raise RemoteProtocolError(over[0], over[1], stream_id=sid)
        events.append(WindowUpdated(sid, rec.send_credit, window))
        self._maybe_forget(rec)

    def _handle_error(self, frame: Frame, events: list[Event]) -> None:
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
            rec.outbox.clear()
            rec.outbox_bytes = 0
            self._maybe_forget(rec)
            return
        self._close_stream(rec, StreamInput.RECV_RST)
        events.append(StreamReset(sid, code, message, retry, by_peer=True))

    def _handle_capabilities(self, frame: Frame, events: list[Event], text: bool) -> None:
        caps = frame.ext["caps"]  # on stream 0, a map offering version 1: validate_frame
        fs = caps.get("max_frame_size")
        if _is_uint(fs) and fs >= 1024:
            self._peer_frame_size = fs
        win = caps.get("initial_window")
        if _is_uint(win) and 1 <= win <= MAX_WINDOW:
            self._peer_initial_window = win
        self._frag_size = _frag_size(self._peer_frame_size, self._peer_initial_window)
        ms = caps.get("max_streams")
        if _is_uint(ms):
            self._peer_max_streams = ms
        first = not self._peer_sent_caps
        self._peer_sent_caps = True
        self.peer_caps = caps
        events.append(CapabilitiesReceived(caps))
        if first and self.role is Role.ROUTER:
            self._queue(self._caps_frame(), text)

    # ------------------------------------------------------------------ errors

    def _stream_error(self, exc: ProtocolError, events: list[Event]) -> None:
        sid = exc.stream_id
        rec = self._streams.get(sid)
        text = rec.text if rec is not None else self._out_text
        # Queue (encode) before closing: closing a text stream retires its alias.
        self._queue(Frame.error(sid, exc.code, exc.message, exc.retry_after_ms), text)
        if rec is not None:
            self._close_stream(rec, StreamInput.SEND_RST)
        elif text:
            self.json.forget(sid)  # a refused SYN: its alias may be used again
        events.append(
            StreamReset(sid, str(exc.code), exc.message, exc.retry_after_ms, by_peer=False)
        )

    def _connection_error(self, exc: ProtocolError, events: list[Event]) -> list[Event]:
        self._queue(Frame.error(0, exc.code, exc.message, exc.retry_after_ms), self._out_text)
        self._closed = ConnectionClosed(str(exc.code), exc.message, by_peer=False)
        self._streams.clear()
        events.append(self._closed)
        return events

    # ------------------------------------------------------------------ streams

    def _new_stream(self, sid: int, *, text: bool) -> StreamRecord:
        rec = StreamRecord(sid, self.role, text=text)
        rec.recv_credit = _TEXT_PEER_WINDOW if text else self.limits.initial_window
        peer_window = self._peer_initial_window
        if text and not self._peer_sent_caps:
            peer_window = _TEXT_PEER_WINDOW  # a browser that never sends WINDOW_UPDATE
        rec.send_credit = rec.send_window = peer_window
        self._streams[sid] = rec
        return rec

    def _close_stream(self, rec: StreamRecord, inp: StreamInput) -> None:
        if rec.closed:
            return
        rec.apply(inp)
        if inp in (StreamInput.SEND_RST, StreamInput.RECV_RST):
            rec.outbox.clear()
            rec.outbox_bytes = 0
        self._maybe_forget(rec)

    def _is_gone(self, sid: int) -> bool:
        """The stream was opened and is closed now (its frames are discarded)."""
        rec = self._streams.get(sid)
        if rec is None:
            return sid <= self._highest_id
        return rec.closed and not rec.outbox  # one still flushing takes WINDOW_UPDATE

    def _maybe_forget(self, rec: StreamRecord) -> None:
        """Drop a closed stream once its outbox is empty; its id stays 'closed' because
        ids only increase (frames for it are then discarded)."""
        if (
            rec.state is StreamState.CLOSED
            and not rec.outbox
            and self._streams.pop(rec.stream_id, None) is not None
        ):
            if not self._streams:
                self.timer_stale = True  # the idle timeout applies again
            if rec.text:
                self.json.forget(rec.stream_id)

    def _get_sendable(self, stream_id: int) -> StreamRecord:
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
        text: bool = False,
        now: float | None = None,
    ) -> int:
        """Open a stream with a SYN (client only). Returns its stream id.

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
        sid = self._highest_id + 1 if stream_id is None else stream_id
        if not self._highest_id < sid <= MAX_STREAM_ID:
            raise LocalProtocolError(
                ErrorCode.EPROTO, f"stream id {sid} must exceed {self._highest_id}"
            )
        if len(self._streams) >= self._peer_max_streams:
            raise LocalProtocolError(
                ErrorCode.EWINDOW, f"the peer allows {self._peer_max_streams} concurrent streams"
            )
        self._highest_id = sid
        if text:
            self.json.note_stream_id(sid)
        rec = self._new_stream(sid, text=text)
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
        self._send_data(rec, payload, Flags.SYN, ext, qos=qos, ttl=ttl, fin=end_stream)
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
        # path, without building and validating a Frame (ATP-FLOW, ATP-SEQ still hold).
        if (
            rec is not None
            and rec.sendable
            and not end_stream
            and not ext
            and not rec.text
            and not rec.outbox
            and self._closed is None
        ):
            n = len(payload)
            cost = HEADER_SIZE + n
            if cost <= rec.send_credit and n <= self._frag_size and rec.send_seq < U32_MAX:
                seq = rec.send_seq
                rec.send_seq = seq + 1
                rec.send_credit -= cost
                header = _HEADER_PACK(
                    VERSION, 0, Flags.MORE if more else 0, 0, stream_id, seq, 0, 0, 0, n
                )
                self._out.append(header + payload)
                self._out_bytes += cost
                sent = self.frames_sent
                sent[FrameType.DATA] = sent.get(FrameType.DATA, 0) + 1
                return
        rec = self._get_sendable(stream_id)
        self._send_data(
            rec, payload, Flags.MORE if more else 0, dict(ext) if ext else {}, fin=end_stream
        )

    def _send_data(
        self,
        rec: StreamRecord,
        payload: bytes | memoryview,
        flags: int,
        ext: dict[str, Any],
        *,
        qos: int = 0,
        ttl: int = 0,
        fin: bool = False,
    ) -> None:
        ext_len = len(encode_ext(ext)) if ext else 0
        if HEADER_SIZE + ext_len > rec.send_window // 2:
            # ATP-FLOW-014: a first fragment that cannot fit half the peer's window might
            # wait forever for credit a conformant receiver never has to return.
            raise LocalProtocolError(
                ErrorCode.ETOOBIG,
                f"an ext of {ext_len} bytes does not fit half the peer's initial_window "
                f"({rec.send_window}): at most {rec.send_window // 2 - HEADER_SIZE} bytes",
                stream_id=rec.stream_id,
            )
        if fin:
            rec.apply(StreamInput.SEND_FIN)
        elif not flags & _SYN:
            rec.apply(StreamInput.SEND_DATA)
        frag = self._frag_size
        seq = rec.send_seq
        if seq > U32_MAX or (seq == U32_MAX and not fin):
            # ATP-SEQ-005: end the stream rather than wrap; the last number carries FIN
            raise LocalProtocolError(
                ErrorCode.EPROTO,
                "msg_seq would wrap: end the stream (FIN) with this message",
                stream_id=rec.stream_id,
            )
        rec.send_seq = seq + 1
        if rec.text:  # ATP-FLOW-008: text frames cost their UTF-8 length
            for item in self._text_fragments(rec, payload, flags, ext, ext_len, seq, qos, ttl, fin):
                rec.outbox.append(item)
                rec.outbox_bytes += item[1]
            self._flush_outbox(rec)
            return
        total = len(payload)
        chunks: list[bytes | memoryview]
        if total + ext_len <= frag:
            chunks = [payload]
        else:
            room = max(frag - ext_len, 1)
            mv = memoryview(payload)
            chunks = [mv[:room]]
            chunks.extend(mv[i : i + frag] for i in range(room, total, frag))
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            f = flags if i == 0 else flags & ~Flags.SYN
            if i < last:
                f = (f | Flags.CONT) & ~Flags.FIN
            elif fin:
                f |= Flags.FIN
            frame = Frame(
                FrameType.DATA,
                f,
                rec.stream_id,
                seq,
                i,
                qos if i == 0 else 0,
                ttl if i == 0 else 0,
                ext if i == 0 and ext else None,
                chunk,
            )
            cost = HEADER_SIZE + len(chunk) + (ext_len if i == 0 else 0)
            rec.outbox.append((frame, cost))
            rec.outbox_bytes += cost
        self._flush_outbox(rec)

    def _text_fragments(
        self,
        rec: StreamRecord,
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
        total = len(payload)
        if self.json.take_announcement(rec.stream_id):  # the first DATA under an alias
            ext = {**ext, "stream_num": rec.stream_id}  # ATP-JSON-016
        while True:
            chunks: list[bytes | memoryview]
            if total + ext_len <= frag:
                chunks = [payload]
            else:
                room = max(frag - ext_len, 1)
                mv = memoryview(payload)
                chunks = [mv[:room]]
                chunks.extend(mv[i : i + frag] for i in range(room, total, frag))
            built: list[tuple[Frame, int]] = []
            last = len(chunks) - 1
            for i, chunk in enumerate(chunks):
                f = flags if i == 0 else flags & ~Flags.SYN
                if i < last:
                    f = (f | Flags.CONT) & ~Flags.FIN
                elif fin:
                    f |= Flags.FIN
                frame = Frame(
                    FrameType.DATA,
                    f,
                    rec.stream_id,
                    seq,
                    i,
                    qos if i == 0 else 0,
                    ttl if i == 0 else 0,
                    ext if i == 0 and ext else None,
                    chunk,
                )
                built.append((frame, _text_cost(self.json.encode(frame))))
            if not self._peer_sent_caps:
                return built  # a browser's credit is unlimited (ATP-FLOW-007)
            worst = max(c for _, c in built)
            if worst <= limit or frag <= 64:
                return built
            frag = max(frag * limit // worst - 64, 64)

    def _flush_outbox(self, rec: StreamRecord) -> None:
        box = rec.outbox
        while box:
            cost = box[0][1]
            if cost > rec.send_credit:
                # ATP-FLOW-013: credit above half the peer's window may never grow (the
                # peer returns credit only once half its window is consumed, ATP-FLOW-012),
                # so a frame that does not fit is cut to what does; at or below half,
                # waiting is safe and avoids tiny fragments.
                if rec.send_credit <= rec.send_window // 2 or not self._cut_head(rec):
                    break
                cost = box[0][1]
            frame, cost = box.popleft()
            rec.send_credit -= cost
            rec.outbox_bytes -= cost
            self._queue(frame, rec.text)
        if not box:
            self._maybe_forget(rec)

    def _cut_head(self, rec: StreamRecord) -> bool:
        """Split the stream's first queued frame so that its first part costs what fits
        the credit left (ATP-FLOW-013); the message's later fragments move up one
        frag_seq. False when no cut is possible (no payload byte would fit, or the message
        would pass 65,536 fragments, ATP-SEQ-013).

        A binary frame costs its encoded length, so the first part takes exactly the
        credit. A text frame costs the UTF-8 length of its JSON (ATP-FLOW-008), which is
        not linear in the payload (base64) and changes with ``frag_seq``: each new or
        renumbered piece is costed by encoding it, and the first part is the longest
        whose cost fits (its cost grows with its length, so a bisection finds it)."""
        box = rec.outbox
        frame, cost = box[0]
        payload = frame.payload
        same = 1  # the message's fragments are contiguous in the outbox (ATP-SEQ-011)
        while same < len(box) and box[same][0].msg_seq == frame.msg_seq:
            same += 1
        if box[same - 1][0].frag_seq >= 0xFFFF:
            return False
        sid, seq, flags = rec.stream_id, frame.msg_seq, frame.flags
        view = memoryview(payload)

        def head(room: int) -> Frame:
            return Frame(
                FrameType.DATA,
                (flags | _CONT) & ~_FIN,
                sid,
                seq,
                frame.frag_seq,
                frame.qos,
                frame.ttl,
                frame.ext or None,
                view[:room],
            )

        def tail(room: int) -> Frame:
            return Frame(
                FrameType.DATA, flags & ~_SYN, sid, seq, frame.frag_seq + 1, 0, 0, None, view[room:]
            )

        credit = rec.send_credit
        later = [f._replace(frag_seq=f.frag_seq + 1) for f, _ in list(box)[1:same]]
        if rec.text:
            text_cost = self._text_frame_cost
            if len(payload) < 2 or text_cost(head(1)) > credit:
                return False
            lo, hi = 1, len(payload) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if text_cost(head(mid)) <= credit:
                    lo = mid
                else:
                    hi = mid - 1
            pieces = [(f, text_cost(f)) for f in (head(lo), tail(lo), *later)]
        else:
            overhead = cost - len(payload)
            room = credit - overhead
            if room < 1 or room >= len(payload):
                return False
            pieces = [
                (head(room), overhead + room),
                (tail(room), HEADER_SIZE + len(payload) - room),
            ]
            pieces.extend((f, c) for f, (_, c) in zip(later, list(box)[1:same], strict=True))
        removed = [box.popleft() for _ in range(same)]
        box.extendleft(reversed(pieces))
        rec.outbox_bytes += sum(c for _, c in pieces) - sum(c for _, c in removed)
        return True

    def _text_frame_cost(self, frame: Frame) -> int:
        """What a DATA frame costs on a text stream: the UTF-8 length of its JSON."""
        return _text_cost(self.json.encode(frame))

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application consumed ``size`` bytes of the stream's input.

        Credit is returned with WINDOW_UPDATE once half the initial window is consumed.
        """
        rec = self._streams.get(stream_id)
        if rec is None or rec.closed or size <= 0 or (rec.text and not self._peer_sent_caps):
            return
        rec.recv_unacked += size
        if rec.recv_unacked >= self._ack_threshold and rec.can_receive:
            credit = rec.recv_unacked
            rec.recv_unacked = 0
            rec.recv_credit += credit
            self._queue(Frame.window_update(stream_id, credit=credit), rec.text)

    def update_window(self, stream_id: int, window: BudgetWindow) -> None:
        """Change the stream's budget window mid-flight (client), via WINDOW_UPDATE."""
        rec = self._get_open(stream_id)
        rec.window = rec.window.merged(window)
        self._queue(Frame.window_update(stream_id, window=window), rec.text)

    def cap_window(self, stream_id: int, cap: BudgetWindow) -> None:
        """Limit the stream's budget window by ``cap`` (router: the tenant's and the
        adapters' limits), now and after every WINDOW_UPDATE (ATP-BUDGET-001)."""
        rec = self._streams.get(stream_id)
        if rec is not None:
            rec.cap = rec.cap.clamp(cap)
            rec.window = rec.window.clamp(rec.cap)

    def send_budget_update(self, stream_id: int, usage: Mapping[str, Any]) -> None:
        """Report usage so far to the client (router), via BUDGET_UPDATE."""
        rec = self._get_open(stream_id)
        self._queue(
            Frame(FrameType.BUDGET_UPDATE, 0, stream_id, ext={"usage": dict(usage)}), rec.text
        )

    def _get_open(self, stream_id: int) -> StreamRecord:
        rec = self._streams.get(stream_id)
        if self._closed is not None or rec is None or rec.closed:
            raise StreamClosedError(
                ErrorCode.EPROTO, f"stream {stream_id} is not open", stream_id=stream_id
            )
        return rec

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
        self._queue(Frame.error(stream_id, code, message, retry_after_ms), rec.text)
        self._close_stream(rec, StreamInput.SEND_RST)

    def reset_stream(self, stream_id: int) -> None:
        """Abandon a stream (RST, no error detail): a client's cancel."""
        rec = self._streams.get(stream_id)
        if self._closed is not None or rec is None or rec.closed:
            return
        self._queue(Frame(FrameType.DATA, Flags.RST, stream_id, rec.send_seq), rec.text)
        self._close_stream(rec, StreamInput.SEND_RST)

    # ------------------------------------------------------------------ budget

    def charge(self, stream_id: int, *, tokens: int = 0, usd_micros: int = 0) -> None:
        """Charge usage to the stream's budget window (ATP-BUDGET).

        Raises:
            BudgetExceeded: EBUDGET when the tokens or money would pass the window; the
                usage is still recorded (it was spent). The caller ends the stream.
        """
        rec = self._streams.get(stream_id)
        if rec is None:
            return
        rec.usage.tokens += tokens
        rec.usage.usd_micros += usd_micros
        over = _over_budget(rec)
        if over is not None:
            raise BudgetExceeded(over[0], over[1], stream_id=stream_id)

    def acquire_parallel(self, stream_id: int) -> None:
        """Count one more adapter call in flight for the stream.

        Raises:
            BudgetExceeded: EWINDOW when max_parallel calls are already in flight.
        """
        rec = self._streams.get(stream_id)
        if rec is None:
            raise StreamClosedError(ErrorCode.EPROTO, "stream is closed", stream_id=stream_id)
        limit = rec.window.max_parallel
        if limit is not None and rec.usage.parallel >= limit:
            raise BudgetExceeded(
                ErrorCode.EWINDOW,
                f"max_parallel {limit} adapter calls already in flight",
                stream_id=stream_id,
            )
        rec.usage.parallel += 1

    def release_parallel(self, stream_id: int) -> None:
        rec = self._streams.get(stream_id)
        if rec is not None and rec.usage.parallel > 0:
            rec.usage.parallel -= 1

    def usage(self, stream_id: int) -> dict[str, int]:
        rec = self._streams.get(stream_id)
        if rec is None:
            return {"tokens": 0, "usd_micros": 0, "parallel": 0}
        u = rec.usage
        return {"tokens": u.tokens, "usd_micros": u.usd_micros, "parallel": u.parallel}

    # ------------------------------------------------------------------ session

    def _caps_frame(self) -> Frame:
        lim = self.limits
        caps = {
            "versions": [VERSION],
            "max_frame_size": lim.max_frame_size,
            "max_message_size": lim.max_message_size,
            "initial_window": lim.initial_window,
            "max_streams": lim.max_streams,
            "heartbeat_ms": lim.heartbeat_ms,
            "idle_timeout_ms": lim.idle_timeout_ms,
            "features": list(_FEATURES),
        }
        return Frame(FrameType.CAPABILITIES, 0, 0, ext={"caps": caps})

    def send_capabilities(self, *, text: bool = False) -> None:
        """Send our CAPABILITIES (clients: as the first frame; the router answers)."""
        self._queue(self._caps_frame(), text)

    def send_heartbeat(self, now: float, payload: bytes = b"") -> None:
        if self._closed is None:
            self._hb_sent_at = now
            self._queue(Frame(FrameType.DATA, Flags.HB, 0, payload=payload), self._out_text)

    def start_drain(
        self, message: str = "the router is shutting down", retry_after_ms: int = 1000
    ) -> None:
        """Stop accepting streams (router): new SYNs get EDRAINING; open ones go on."""
        if self._draining or self._closed is not None:
            return
        self._draining = True
        self._drain_retry_ms = retry_after_ms
        self._queue(Frame.error(0, ErrorCode.EDRAINING, message, retry_after_ms), self._out_text)

    def close(self, code: ErrorCode | str = ErrorCode.EDRAINING, message: str = "closing") -> None:
        """Close the connection with a connection-level ERROR frame."""
        if self._closed is not None:
            return
        self._queue(Frame.error(0, code, message), self._out_text)
        self._closed = ConnectionClosed(str(code), message, by_peer=False)
        self._streams.clear()

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: nothing pending)."""
        if self._closed is not None:
            return None
        candidates: list[float] = []
        if self.limits.idle_timeout_ms and not self._streams:
            candidates.append(self._last_recv + self.limits.idle_timeout_ms / 1000)
        if self._heartbeat is not None:
            candidates.append(self._last_send + self._heartbeat)
        candidates.extend(
            rec.deadline
            for rec in self._streams.values()
            if rec.deadline is not None and not rec.closed
        )
        return min(candidates) if candidates else None

    def handle_timer(self, now: float) -> list[Event]:
        """Fire what is due at ``now``: stream TTLs, heartbeats, the idle timeout."""
        events: list[Event] = []
        if self._closed is not None:
            return events
        for rec in [r for r in self._streams.values() if r.deadline is not None]:
            if rec.deadline is not None and now >= rec.deadline and not rec.closed:
                msg = "the stream's ttl passed"
                self.send_error(rec.stream_id, ErrorCode.ETIMEOUT, msg)
                events.append(StreamReset(rec.stream_id, ErrorCode.ETIMEOUT, msg, by_peer=False))
        if (
            self.limits.idle_timeout_ms
            and not self._streams
            and now - self._last_recv >= self.limits.idle_timeout_ms / 1000
        ):
            self._connection_error(
                RemoteProtocolError(
                    ErrorCode.ETIMEOUT,
                    f"idle for {self.limits.idle_timeout_ms} ms with no open stream",
                ),
                events,
            )
            return events
        if self._heartbeat is not None and now - self._last_send >= self._heartbeat:
            self.send_heartbeat(now)
        return events

    # ------------------------------------------------------------------ output

    def _queue(self, frame: Frame, text: bool) -> None:
        # Encoded now, so a text reply carries the alias the stream had when it was sent.
        data = self.json.encode(frame) if text else encode_frame(frame)
        self.frames_sent[frame.type] = self.frames_sent.get(frame.type, 0) + 1
        self._out.append(data)
        self._out_bytes += len(data)

    def has_data_to_send(self) -> bool:
        return bool(self._out)

    @property
    def queued_bytes(self) -> int:
        """Size of what :meth:`data_to_send` would return now (text counted in chars)."""
        return self._out_bytes

    @property
    def peer_message_limit(self) -> int:
        """The largest binary WebSocket message the peer must accept: its max_frame_size
        plus 65,536 (ATP-WS-011), which one whole frame always fits."""
        return self._peer_frame_size + WS_MESSAGE_SLACK

    def data_to_send(
        self, now: float | None = None, *, max_message: int | None = None
    ) -> list[bytes | str]:
        """Everything queued: consecutive binary frames coalesced into as few ``bytes`` as
        fit ``max_message`` (default :attr:`peer_message_limit`; one WebSocket message /
        one write each), each text frame one ``str``. A frame larger than the cap goes
        alone (it still fits the peer's max_frame_size); a frame is never split.

        Pass ``now`` so that the heartbeat timer knows when we last sent.
        """
        if not self._out:
            return []
        if now is not None:
            self._last_send = now
        cap = self.peer_message_limit if max_message is None else max_message
        out: list[bytes | str] = []
        binary: list[bytes] = []
        size = 0
        for item in self._out:
            if isinstance(item, str):
                if binary:
                    out.append(b"".join(binary) if len(binary) > 1 else binary[0])
                    binary, size = [], 0
                out.append(item)
            else:
                if binary and size + len(item) > cap:  # ATP-WS-011
                    out.append(b"".join(binary) if len(binary) > 1 else binary[0])
                    binary, size = [], 0
                binary.append(item)
                size += len(item)
        if binary:
            out.append(b"".join(binary) if len(binary) > 1 else binary[0])
        self._out.clear()
        self._out_bytes = 0
        return out


def _unpinned(payload: Payload) -> Payload:
    """A payload that does not keep a much larger received buffer alive."""
    if isinstance(payload, memoryview) and len(payload.obj) > 2 * len(payload) + 4096:  # type: ignore[arg-type]
        return bytes(payload)
    return payload


def _frag_size(peer_frame_size: int, peer_initial_window: int) -> int:
    """Fragments fit the peer's max_frame_size and a quarter of its window, so a message
    larger than the window still flows as credit comes back. A whole frame (header
    included) must fit the window, or a small window would never grant enough credit."""
    return min(
        peer_frame_size,
        max(peer_initial_window // 4, 1024),
        max(peer_initial_window - HEADER_SIZE, 1),
    )


def _is_uint(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _over_budget(rec: StreamRecord) -> tuple[ErrorCode, str] | None:
    w, u = rec.window, rec.usage
    if w.max_tokens is not None and u.tokens > w.max_tokens:
        return ErrorCode.EBUDGET, f"{u.tokens} tokens used, budget window allows {w.max_tokens}"
    if w.max_usd_micros is not None and u.usd_micros > w.max_usd_micros:
        return (
            ErrorCode.EBUDGET,
            f"{u.usd_micros} usd_micros spent, budget window allows {w.max_usd_micros}",
        )
    return None


def _text_cost(text: str | bytes) -> int:
    """Credit cost of a DATA frame sent as text: the UTF-8 length of the whole text
    message, which any JSON client can count (ATP-FLOW-008)."""
    if isinstance(text, bytes):
        return len(text)
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
