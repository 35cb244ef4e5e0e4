"""One QUIC connection as an ATP per-stream transport (spec §13.2), for both ends.

:class:`QuicTransport` implements :class:`~atp_proto.transports.base.StreamTransport`
over an aioquic :class:`~aioquic.quic.connection.QuicConnection` (sans-IO) that a
:class:`~._quic_udp.UdpEndpoint` feeds and drains. It only moves bytes and maps streams.
Its input side — aioquic's stream events as the session's channels, and the binding's
rules on what the peer does with QUIC streams (ATP-QUIC-002/005/011/021/023/024/025) — is
:class:`~._quic_input.QuicInput`; here are the rest:

* Output arrives as the core's per-stream view. The router ends its sending side (FIN)
  with the last frame of an ATP stream (its FINAL or ERROR, ATP-QUIC-006/013); the client
  ends its own when the router's FIN has arrived, since WINDOW_UPDATEs for the router's
  output ride the client's direction (ATP-QUIC-012). A reset (RST / ERROR) goes as the
  frame, then FIN, then STOP_SENDING with the code's QUIC code (ATP-QUIC-006): never
  RESET_STREAM for our own reset, which would discard the ERROR frame.
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
from collections.abc import Callable

import trio
from aioquic.quic import events as qe
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicErrorCode

from atp_proto.frames import ErrorCode

from ._quic_frames import reset_code
from ._quic_input import INBOX_LIMIT, QuicInput
from ._quic_udp import Address, UdpEndpoint
from .base import TransportClosed, close_reason, quic_error_code

__all__ = ["ALPN", "INBOX_LIMIT", "NORMAL_CLOSE", "QuicTransport"]

# aioquic logs handshake failures itself; the caller reports them (a library stays quiet
# unless the application configures logging)
logging.getLogger("quic").addHandler(logging.NullHandler())

#: ATP-QUIC-001
ALPN = "atp/1"
#: application error code of a close without error (ATP-QUIC-015)
NORMAL_CLOSE = 0x0
_INF = math.inf
#: the smallest stateless reset (RFC 9000 §10.3: 5 unpredictable bytes, then the token)
RESET_MIN = 21
RESET_TOKEN_SIZE = 16


class QuicTransport(QuicInput):
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
        self._init_input()  # the channels and the stream mapping (._quic_input)
        self._unacked: set[int] = set()
        self._timer_wake = trio.Event()
        self._timer_scope: trio.CancelScope | None = None
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
                self._peer_stop_sending(ev.stream_id, ev.error_code)
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
            self.quic.close(error_code=code, reason_phrase=close_reason(reason))
            self.endpoint.mark(self)
            self._timer_wake.set()
        with trio.move_on_after(1):
            await self._sent_close.wait()

    def close_now(self, code: int = NORMAL_CLOSE, reason: str = "") -> None:
        """Close at once, without the sender task (it may be gone): CONNECTION_CLOSE
        written straight to the socket, best effort."""
        if not self.terminated.is_set() and not self.closed:
            self.quic.close(error_code=code, reason_phrase=close_reason(reason))
        for data, addr in self.take_datagrams(trio.current_time()):
            self.endpoint.send_now(data, addr)

    @property
    def closed(self) -> bool:
        return self.terminated.is_set() or self.quic._state in _CLOSING_STATES


_CLOSING_STATES = frozenset(
    {QuicConnectionState.CLOSING, QuicConnectionState.DRAINING, QuicConnectionState.TERMINATED}
)
