"""One QUIC connection as an ATP per-stream transport (spec §13.2), for both ends.

:class:`QuicTransport` implements :class:`~atp_proto.transports.base.StreamTransport`
over an aioquic :class:`~aioquic.quic.connection.QuicConnection` (sans-IO) that a
:class:`~._quic_udp.UdpEndpoint` feeds and drains. It only moves bytes and maps streams:

* QUIC stream 0 — the client's first bidirectional stream — is the control stream, both
  directions (ATP-QUIC-002, ATP-QUIC-011); every other client-opened bidirectional QUIC
  stream carries one ATP stream, learned from the stream id in its first frame's header
  (its header). A second QUIC stream naming an ATP stream that has one, or an ATP id
  not above the one of every earlier new QUIC stream's first frame (ATP-QUIC-023: one
  integer, like HTTP/2's highest stream id), a stream-0 frame off the control stream, a
  unidirectional or server-opened stream, the peer ending or resetting the control
  stream or sending STOP_SENDING on it (ATP-QUIC-025): EPROTO
  (:class:`~.base.TransportFault`, ATP-QUIC-002/005). Everything else of ATP-QUIC-005 (a
  frame for another stream later on a QUIC stream) is the core's per-channel decoder.
  The peer's FIN on an ATP stream's QUIC stream before ours is a
  :class:`~.base.ChannelEnd`: the core ends the ATP stream with EPROTO if it is still
  open (ATP-QUIC-024: a client that ended its side can send no WINDOW_UPDATE).
* Output arrives as the core's per-stream view. The router ends its sending side (FIN)
  with the last frame of an ATP stream (its FINAL or ERROR, ATP-QUIC-006/013); the client
  ends its own when the router's FIN has arrived, since WINDOW_UPDATEs for the router's
  output ride the client's direction (ATP-QUIC-012). A reset (RST / ERROR) goes as the
  frame, then FIN, then STOP_SENDING with the code's QUIC code (ATP-QUIC-006): never
  RESET_STREAM for our own reset, which would discard the ERROR frame. A peer's
  RESET_STREAM / STOP_SENDING is a :class:`~.base.ChannelReset` for the session.
* Backpressure (ATP-QUIC-010): ``pending_bytes`` is what aioquic holds unacknowledged;
  the session counts it against its output watermark, and ``on_writable`` tells it when
  acknowledgements made room. Per stream, the core never queues more than the peer's
  credit allows, so no QUIC stream buffers more than one credit window.
* Closing: a connection-level error closes with 0x100 + the code's index (ATP-QUIC-004);
  a normal close uses application code 0 (ATP-QUIC-015); the peer's code is kept in
  ``peer_close_code``.
* Stateless reset (RFC 9000 §10.3, ATP-QUIC-022): aioquic does not detect one, so the
  client does. A short-header datagram whose last 16 bytes are the reset token of the
  router's connection ID in use ends the connection at once: nothing more is sent on it
  (aioquic enters its draining state), the session learns it is over (``terminated``,
  ``peer_close_reason`` "stateless reset", no close code: its streams end with
  EINTERNAL, ATP-QUIC-014). Only the connection ID in use is checked: a token of a CID
  not used or retired must not be (§10.3.1).
"""

from __future__ import annotations

import logging
import math
import struct
from collections import deque
from collections.abc import Callable

import trio
from aioquic.quic import events as qe
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicErrorCode

from atp_proto.frames import MAX_STREAM_ID, ErrorCode

from ._quic_frames import FirstFrame, reset_code
from ._quic_udp import Address, UdpEndpoint
from .base import (
    ChannelData,
    ChannelEnd,
    ChannelReset,
    TransportClosed,
    TransportFault,
    quic_error_code,
)

__all__ = ["ALPN", "NORMAL_CLOSE", "QuicTransport"]

# aioquic logs handshake failures itself; the caller reports them (a library stays quiet
# unless the application configures logging)
logging.getLogger("quic").addHandler(logging.NullHandler())

#: ATP-QUIC-001
ALPN = "atp/1"
#: application error code of a close without error (ATP-QUIC-015)
NORMAL_CLOSE = 0x0
#: bytes received and not yet taken by the session beyond which the peer is cut off: the
#: session reads continuously, so only a peer flooding frames it does not answer gets here
INBOX_LIMIT = 8 * 1024 * 1024

_SID = struct.Struct("!I")
_INF = math.inf
#: the smallest stateless reset (RFC 9000 §10.3: 5 unpredictable bytes, then the token)
RESET_MIN = 21
RESET_TOKEN_SIZE = 16


class QuicTransport:
    """One QUIC connection of either end, as the session's per-stream transport."""

    per_stream = True

    def __init__(
        self,
        quic: QuicConnection,
        endpoint: UdpEndpoint,
        *,
        is_client: bool,
        remote: str = "",
        on_cid: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        self.quic = quic
        self.endpoint = endpoint
        self.is_client = is_client
        self.remote = remote
        self._on_cid = on_cid  # the server's CID routing table (issued: True, retired)
        self.pending_bytes = 0
        self.on_writable: Callable[[], None] | None = None
        self.handshake_done = trio.Event()
        self.terminated = trio.Event()
        self.alpn: str | None = None
        self.peer_close_code: int | None = None
        self.peer_close_reason = ""
        self._inbox: deque[ChannelData | ChannelEnd | ChannelReset | TransportFault] = deque()
        self._inbox_bytes = 0
        self._inbox_ready = trio.Event()
        self._q2a: dict[int, int] = {0: 0}  # QUIC stream -> ATP stream (its channel)
        self._a2q: dict[int, int] = {0: 0}
        #: new QUIC streams' bytes until their turn (ATP-QUIC-021); their FINs
        self._head: dict[int, FirstFrame] = {}
        self._head_fin: set[int] = set()
        self._next_new = 4  #: the QUIC stream whose first frame is handed on next
        self._last_first = 0  #: the ATP stream named by the last first frame handed on
        self._skip: set[int] = set()  #: new streams reset before their first frame
        self._fin_sent: set[int] = set()
        self._fin_received: set[int] = set()
        self._unacked: set[int] = set()
        self._stopped: set[int] = set()  # STOP_SENDING seen, the peer's side not ended
        self._timer_wake = trio.Event()
        self._timer_scope: trio.CancelScope | None = None
        self._faulted = False
        self._sent_close = trio.Event()
        #: the router reset the connection statelessly (ATP-QUIC-022)
        self.stateless_reset = False

    # ------------------------------------------------------------------ endpoint side

    def take_datagrams(self, now: float) -> list[tuple[bytes, Address]]:
        """The sender's call: everything aioquic has to send now (coalesced packets)."""
        out = self.quic.datagrams_to_send(now)
        self._check_timer()
        if self.quic._state in _CLOSING_STATES:
            self._sent_close.set()
        return out

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        """The receive loop's call, per datagram (events are handled per batch)."""
        if self.is_client and len(data) >= RESET_MIN and not data[0] & 0x80:
            token = self.quic._peer_cid.stateless_reset_token
            if token and data[-RESET_TOKEN_SIZE:] == token and addr == self.quic.get_peer_address():
                # a valid packet's last 16 bytes are its AEAD tag: one matching the token
                # by chance has odds of 2^-128, so the check may precede decryption
                # (RFC 9000 §10.3.1 allows skipping it only for processed datagrams)
                self._reset_statelessly(now)
                return
        self.quic.receive_datagram(data, addr, now)

    def _reset_statelessly(self, now: float) -> None:
        """The router has no state for this connection: it is over, nothing more is
        sent on it (RFC 9000 §10.3.1, ATP-QUIC-022)."""
        quic = self.quic
        if self.stateless_reset or quic._state in _CLOSING_STATES:
            return
        self.stateless_reset = True
        if quic._close_event is None:
            quic._close_event = qe.ConnectionTerminated(
                error_code=QuicErrorCode.NO_ERROR, frame_type=None, reason_phrase="stateless reset"
            )
        quic._close_begin(is_initiator=False, now=now)  # draining: sends nothing more
        self.peer_close_code = None
        self.peer_close_reason = "stateless reset"
        self.terminated.set()
        self.handshake_done.set()
        self._inbox_ready.set()
        self._sent_close.set()
        self._timer_wake.set()

    def after_batch(self) -> None:
        """The receive loop's call after a batch of datagrams for this connection."""
        self._handle_events()
        self._recount()
        self.endpoint.mark(self)

    async def run_timer(self) -> None:
        """aioquic's loss-detection / idle / ACK timer on trio's clock, until terminated.

        One cancel scope per expiry, not per change: :meth:`_check_timer` moves the
        scope's deadline to ``get_timer()`` (earlier or later) after every sender pass,
        so a timer that the sender's own pass made moot (an ACK that left with data, a
        loss timer pushed back by acknowledgements) never wakes this task. Under load
        that is most of them; a wake-up costs a trio Cancelled and a task switch, the
        deadline change a heap push."""
        quic = self.quic
        while not self.terminated.is_set():
            self._timer_wake = trio.Event()
            at = quic.get_timer()
            with trio.CancelScope(deadline=_INF if at is None else at) as scope:
                self._timer_scope = scope
                await self._timer_wake.wait()
            self._timer_scope = None
            if not scope.cancelled_caught:
                continue  # woken (closing, a stateless reset): look again
            now = trio.current_time()
            at = quic.get_timer()
            if at is None or at > now:
                continue  # moved later since the deadline was set: wait again
            quic.handle_timer(now)
            self._handle_events()
            self._recount()
            self.endpoint.mark(self)
        self._timer_scope = None

    def _check_timer(self) -> None:
        """The timer task's deadline follows aioquic's timer (see :meth:`run_timer`)."""
        scope = self._timer_scope
        if scope is not None:
            at = self.quic.get_timer()
            scope.deadline = _INF if at is None else at

    # ------------------------------------------------------------------ input

    def _handle_events(self) -> None:
        quic = self.quic
        while (ev := quic.next_event()) is not None:
            if isinstance(ev, qe.StreamDataReceived):
                self._stream_data(ev.stream_id, ev.data, ev.end_stream)
            elif isinstance(ev, qe.StreamReset):
                self._peer_reset(ev.stream_id)
            elif isinstance(ev, qe.StopSendingReceived):
                sid = ev.stream_id
                if not sid:  # the control stream lives as long as the session (ATP-QUIC-025;
                    # aioquic has answered with RESET_STREAM itself: the close code tells,
                    # and nothing more can be written on it)
                    self._fin_sent.add(0)
                    self._fault("the peer sent STOP_SENDING on the control stream")
                    continue
                if sid not in self._fin_sent:
                    self._fin_sent.add(sid)
                    quic.reset_stream(sid, ev.error_code)
                # the peer's own frames (its ERROR, ATP-QUIC-006) may still be on the way:
                # the ATP stream is reset after them, when its side ends
                if sid in self._fin_received:
                    self._peer_reset(sid)
                else:
                    self._stopped.add(sid)
            elif isinstance(ev, qe.HandshakeCompleted):
                self.alpn = ev.alpn_protocol
                self.handshake_done.set()
            elif isinstance(ev, qe.ConnectionIdIssued):
                if self._on_cid is not None:
                    self._on_cid(ev.connection_id, True)
            elif isinstance(ev, qe.ConnectionIdRetired):
                if self._on_cid is not None:
                    self._on_cid(ev.connection_id, False)
            elif isinstance(ev, qe.ConnectionTerminated):
                if self.peer_close_code is None:
                    self.peer_close_code = ev.error_code
                    self.peer_close_reason = ev.reason_phrase
                self.terminated.set()
                self.handshake_done.set()  # a handshake waiter learns it failed
                self._inbox_ready.set()  # the session's reader learns it is over
                self._sent_close.set()
                self._timer_wake.set()
        if self._inbox:
            self._inbox_ready.set()

    def _stream_data(self, sid: int, data: bytes, end: bool) -> None:
        channel = self._q2a.get(sid)
        if channel is None:
            if self.is_client or sid & 3:  # the router opens none; no unidirectional
                self._fault(f"QUIC stream {sid} is not a client-opened bidirectional stream")
                return
            self._new_stream_data(sid, data, end)
            return
        self._deliver(sid, channel, data, end)

    def _new_stream_data(self, sid: int, data: bytes, end: bool) -> None:
        """Bytes of a QUIC stream whose first frame has not been handed on yet. New
        streams are handed on in QUIC stream id order (ATP-QUIC-021): QUIC delivers each
        stream independently, so a later stream's SYN may arrive before an earlier one's,
        and ATP stream ids must increase (ATP-STREAM-002). What waits is bounded by the
        inbox limit (and by QUIC's per-stream flow control)."""
        if sid < self._next_new:
            return  # a stream already dealt with (reset before its first frame)
        head = self._head.get(sid)
        if head is None:
            head = self._head[sid] = FirstFrame()
        head.add(data)
        self._inbox_bytes += len(data)
        if end:
            self._head_fin.add(sid)
        if self._inbox_bytes > INBOX_LIMIT:
            self._fault("more input than the session could take", ErrorCode.ETOOBIG)
            return
        self._advance()

    def _advance(self) -> None:
        """Hand on the new streams whose turn has come (see :meth:`_new_stream_data`)."""
        while not self._faulted:
            q = self._next_new
            if q in self._skip:
                self._skip.discard(q)
                self._next_new = q + 4
                continue
            pending = self._head.get(q)
            if pending is None or not pending.complete():
                if pending is not None and q in self._head_fin:
                    self._fault(f"QUIC stream {q} ended before its first frame")
                return
            del self._head[q]
            head = pending.take()
            self._inbox_bytes -= len(head)
            self._next_new = q + 4
            (channel,) = _SID.unpack_from(head, 4)
            if channel == 0:
                self._fault(f"a stream-0 frame on QUIC stream {q}, not the control stream")
                return
            if channel in self._a2q:
                self._fault(f"ATP stream {channel} already has QUIC stream {self._a2q[channel]}")
                return
            if channel <= self._last_first:
                # ATP-QUIC-023: whatever the frame, open or closed (the verdict must not
                # hang on whether an earlier QUIC stream's FIN has arrived yet)
                self._fault(
                    f"QUIC stream {q} names ATP stream {channel}, not above "
                    f"{self._last_first} of an earlier QUIC stream"
                )
                return
            if channel <= MAX_STREAM_ID:  # else the core refuses it (ATP-FRAME-004)
                self._last_first = channel
            self._q2a[q] = channel
            self._a2q[channel] = q
            fin = q in self._head_fin
            self._head_fin.discard(q)
            self._deliver(q, channel, head, fin)

    def _deliver(self, sid: int, channel: int, data: bytes, end: bool) -> None:
        if data:
            self._inbox.append(ChannelData(channel, data))
            self._inbox_bytes += len(data)
            if self._inbox_bytes > INBOX_LIMIT:
                self._fault("more input than the session could take", ErrorCode.ETOOBIG)
        if end:
            if not sid:  # ATP-QUIC-025: the control stream is never ended
                self._fault("the peer ended the control stream (QUIC FIN)")
                return
            self._fin_received.add(sid)
            if sid in self._stopped:
                self._stopped.discard(sid)
                self._peer_reset(sid)
            elif sid not in self._fin_sent:
                # the peer's side ended before ours: the core ends the ATP stream if it is
                # still open (a router: the client broke ATP-QUIC-012, ATP-QUIC-024)
                self._inbox.append(ChannelEnd(channel))
            if self.is_client and sid not in self._fin_sent:
                # the router ended the ATP stream: our side follows (ATP-QUIC-012)
                self._fin_sent.add(sid)
                self.quic.send_stream_data(sid, b"", end_stream=True)
            self._maybe_forget(sid)

    def _maybe_forget(self, q: int) -> None:
        """A QUIC stream done both ways is forgotten, so that a long session's tables
        stay as small as its open streams (its ATP id stays used: the core refuses a SYN
        that reuses it, ATP-STREAM-002)."""
        if q and q in self._fin_sent and q in self._fin_received:
            self._fin_sent.discard(q)
            self._fin_received.discard(q)
            self._stopped.discard(q)
            channel = self._q2a.pop(q, None)
            if channel is not None:
                self._a2q.pop(channel, None)

    def _peer_reset(self, sid: int) -> None:
        channel = self._q2a.get(sid)
        if channel is None and not self.is_client and sid >= self._next_new and not sid & 3:
            # reset before its first frame was handed on: nothing of it reaches the
            # session; its place in the order is given up
            dropped = self._head.pop(sid, None)
            self._inbox_bytes -= dropped.size if dropped is not None else 0
            self._head_fin.discard(sid)
            self._skip.add(sid)
            self._advance()
            return
        if channel:
            self._inbox.append(ChannelReset(channel))
        elif sid == 0:
            self._fault("the peer reset the control stream")

    def _fault(self, message: str, code: ErrorCode = ErrorCode.EPROTO) -> None:
        if not self._faulted:
            self._faulted = True
            self._inbox.append(TransportFault(code, message))

    async def receive(self) -> ChannelData | ChannelEnd | ChannelReset | TransportFault:
        """The next input; consecutive bytes of one channel joined."""
        while True:
            inbox = self._inbox
            if inbox:
                item = inbox.popleft()
                if isinstance(item, ChannelData):
                    channel = item.channel
                    parts = [item.data]
                    while inbox:
                        nxt = inbox[0]
                        if not isinstance(nxt, ChannelData) or nxt.channel != channel:
                            break
                        parts.append(nxt.data)
                        inbox.popleft()
                    if len(parts) > 1:
                        item = ChannelData(channel, b"".join(parts))
                    self._inbox_bytes -= len(item.data)
                return item
            if self.terminated.is_set():
                raise TransportClosed
            self._inbox_ready = trio.Event()
            await self._inbox_ready.wait()

    # ------------------------------------------------------------------ output

    async def send_streams(self, items: list[tuple[int, bytes, bool]]) -> None:
        """Hand the items to aioquic (never waits: backpressure is ``pending_bytes``)."""
        self.try_send_streams(items)

    def try_send_streams(self, items: list[tuple[int, bytes, bool]]) -> bool:
        if self.terminated.is_set() or self.quic._state in _CLOSING_STATES:
            raise TransportClosed
        quic = self.quic
        for atp_sid, data, end in items:
            q = self._a2q.get(atp_sid)
            if q is None:
                if not self.is_client or not (len(data) > 2 and data[1] == 0 and data[2] & 1):
                    # no QUIC stream (any more) for it, and not a SYN that would open one:
                    # a late frame of an ended stream, moot
                    continue
                q = quic.get_next_available_stream_id()  # send at once (DESIGN.md pitfall)
                self._a2q[atp_sid] = q
                self._q2a[q] = atp_sid
            if q in self._fin_sent:
                continue  # our side of it ended (e.g. STOP_SENDING): the frames are moot
            fin = False
            code: int | None = None
            if end and atp_sid:
                code = reset_code(data)
                fin = code is not None or not self.is_client
            quic.send_stream_data(q, data, end_stream=fin)
            self._unacked.add(q)
            self.pending_bytes += len(data)
            if fin:
                self._fin_sent.add(q)
                if code is not None and q not in self._fin_received:
                    quic.stop_stream(q, code)
                self._maybe_forget(q)
        self.endpoint.mark(self)
        return True

    def _recount(self) -> None:
        """``pending_bytes`` from aioquic's stream buffers (unacknowledged bytes)."""
        if not self._unacked:
            return
        streams = self.quic._streams
        total = 0
        gone = []
        for q in self._unacked:
            st = streams.get(q)
            if st is None:
                gone.append(q)
                continue
            snd = st.sender
            n = snd._buffer_stop - snd._buffer_start
            if n <= 0:
                gone.append(q)
            total += max(n, 0)
        for q in gone:
            self._unacked.discard(q)
        fell = total < self.pending_bytes
        self.pending_bytes = total
        if fell and self.on_writable is not None:
            self.on_writable()

    async def flush(self) -> None:
        return None

    async def send(self, data: bytes | str) -> None:  # the message API: not this binding
        raise TransportClosed

    def try_send(self, data: bytes | str) -> bool:
        return False

    # ------------------------------------------------------------------ closing

    async def close_with_error(self, code: ErrorCode | str, reason: str) -> None:
        """Close for a connection-level ATP error: 0x100 + index (ATP-QUIC-004)."""
        await self._close(quic_error_code(code), reason)

    async def aclose(self) -> None:
        await self._close(NORMAL_CLOSE, "")

    async def _close(self, code: int, reason: str) -> None:
        if not self.terminated.is_set() and self.quic._state not in _CLOSING_STATES:
            self.quic.close(error_code=code, reason_phrase=reason[:120])
            self.endpoint.mark(self)
            self._timer_wake.set()
        with trio.move_on_after(1):
            await self._sent_close.wait()

    def close_now(self, code: int = NORMAL_CLOSE, reason: str = "") -> None:
        """Close at once, without the sender task (it may be gone): CONNECTION_CLOSE
        written straight to the socket, best effort."""
        if not self.terminated.is_set() and not self.closed:
            self.quic.close(error_code=code, reason_phrase=reason[:120])
        for data, addr in self.take_datagrams(trio.current_time()):
            self.endpoint.send_now(data, addr)

    @property
    def closed(self) -> bool:
        return self.terminated.is_set() or self.quic._state in _CLOSING_STATES


_CLOSING_STATES = frozenset(
    {QuicConnectionState.CLOSING, QuicConnectionState.DRAINING, QuicConnectionState.TERMINATED}
)
