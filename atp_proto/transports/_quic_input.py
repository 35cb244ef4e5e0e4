"""The input side of a :class:`~._quic_conn.QuicTransport` (spec §13.2): aioquic's stream
events turned into the session's channels, and the binding's rules on what the peer may
do with QUIC streams.

* QUIC stream 0 — the client's first bidirectional stream — is the control stream, both
  directions (ATP-QUIC-002, ATP-QUIC-011); every other client-opened bidirectional QUIC
  stream carries one ATP stream, learned from the stream id in its first frame's header.
  New QUIC streams are handed on in QUIC stream id order (ATP-QUIC-021).
* EPROTO (:class:`~.base.TransportFault`, ATP-QUIC-002/005): a second QUIC stream naming
  an ATP stream that has one, or an ATP id not above the one of every earlier new QUIC
  stream's first frame (ATP-QUIC-023: one integer, like HTTP/2's highest stream id), a
  stream-0 frame off the control stream, a unidirectional or server-opened stream, the
  peer ending or resetting the control stream or sending STOP_SENDING on it
  (ATP-QUIC-025). Everything else of ATP-QUIC-005 (a frame for another stream later on a
  QUIC stream) is the core's per-channel decoder.
* The peer's FIN on an ATP stream's QUIC stream before ours is a
  :class:`~.base.ChannelEnd`: the core ends the ATP stream with EPROTO if it is still
  open (ATP-QUIC-024: a client that ended its side can send no WINDOW_UPDATE). A peer's
  RESET_STREAM / STOP_SENDING is a :class:`~.base.ChannelReset` for the session.
* What the session has not taken yet is bounded (:data:`INBOX_LIMIT`: ETOOBIG beyond).

The mapping tables (QUIC stream <-> ATP stream, the FINs each way) are shared with the
output side, which lives in :mod:`._quic_conn` with the rest of the connection.
"""

from __future__ import annotations

import struct
from collections import deque

import trio
from aioquic.quic.connection import QuicConnection

from atp_proto.frames import MAX_STREAM_ID, ErrorCode

from ._quic_frames import FirstFrame
from .base import ChannelData, ChannelEnd, ChannelReset, TransportClosed, TransportFault

__all__ = ["INBOX_LIMIT", "QuicInput"]

#: bytes received and not yet taken by the session beyond which the peer is cut off: the
#: session reads continuously, so only a peer flooding frames it does not answer gets here
INBOX_LIMIT = 8 * 1024 * 1024

_SID = struct.Struct("!I")

_Item = ChannelData | ChannelEnd | ChannelReset | TransportFault


class QuicInput:
    """The input half of :class:`~._quic_conn.QuicTransport` (a mixin: the connection
    calls :meth:`_init_input` and feeds it aioquic's stream events)."""

    quic: QuicConnection
    is_client: bool
    terminated: trio.Event

    def _init_input(self) -> None:
        self._inbox: deque[_Item] = deque()
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
        self._stopped: set[int] = set()  # STOP_SENDING seen, the peer's side not ended
        self._faulted = False

    def _peer_stop_sending(self, sid: int, code: int) -> None:
        """The peer's STOP_SENDING on QUIC stream ``sid``: our side of it ends (our own
        RESET_STREAM with the peer's code), the ATP stream is reset once the peer's side
        has ended too."""
        if not sid:  # the control stream lives as long as the session (ATP-QUIC-025;
            # aioquic has answered with RESET_STREAM itself: the close code tells, and
            # nothing more can be written on it)
            self._fin_sent.add(0)
            self._fault("the peer sent STOP_SENDING on the control stream")
            return
        if sid not in self._fin_sent:
            self._fin_sent.add(sid)
            self.quic.reset_stream(sid, code)
        # the peer's own frames (its ERROR, ATP-QUIC-006) may still be on the way: the ATP
        # stream is reset after them, when its side ends
        if sid in self._fin_received:
            self._peer_reset(sid)
        else:
            self._stopped.add(sid)

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
