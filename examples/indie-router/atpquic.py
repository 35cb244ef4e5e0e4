"""The indie router's QUIC binding (spec §13.2), over aioquic's asyncio API.

Written from the spec alone, like the rest of this router: QUIC stream 0 is the control
stream (stream-0 frames, both ways); each ATP stream has its own client-opened
bidirectional QUIC stream, whose first frame names it; frames go back to back, binary
only. The session logic is session.py's, shared with the WebSocket binding.

    python examples/indie-router/router.py --quic 127.0.0.1:7443 --cert C.pem --key K.pem
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from atpwire import (
    CONT,
    DATA,
    ERROR,
    FIN,
    HEADER,
    HEADER_LEN,
    QUIC_CODES,
    Frame,
    Violation,
    encode_binary,
)
from session import MAX_EXT, Router, Session, Stream

ALPN = "atp/1"  # ATP-QUIC-001
BARE_RST = 0xFF  # STOP_SENDING's code for a bare RST (ATP-QUIC-006)
SEND_BOUND = 256 * 1024  # stop producing while a QUIC stream holds more unsent (ATP-QUIC-010)


@dataclass
class QStream:
    """One client-opened bidirectional QUIC stream, as the router sees it."""

    qid: int
    buf: bytearray = field(default_factory=bytearray)
    atp: int | None = None  # the ATP stream its first frame named (0: the control stream)
    skip: int = 0  # bytes of a refused oversized frame still to pass over
    fin: bool = False  # the client's FIN has arrived (all it sent is in buf)
    fin_done: bool = False  # ... and has been acted on
    reset: bool = False  # the client's RESET_STREAM arrived
    stopped: bool = False  # the client's STOP_SENDING arrived (our side was reset)
    sent_fin: bool = False  # our side is over (our FIN went, or it was reset)


class QuicSession(Session):
    def __init__(self, router: Router, proto: AtpQuicProtocol) -> None:
        super().__init__(router)
        self.proto = proto
        self.quic = proto._quic
        self.qs: dict[int, QStream] = {}
        self.atp_q: dict[int, int] = {}  # ATP stream id -> its QUIC stream id
        self.next_q = 4  # the next new QUIC stream taken, in id order (ATP-QUIC-021)
        self.first_max = 0  # the highest ATP id a first frame named (ATP-QUIC-023)
        self.started = False
        self.tasks: list[asyncio.Task[None]] = []
        self._transmit: asyncio.Handle | None = None
        self._acked: asyncio.Future[None] | None = None

    # --- the binding's part ------------------------------------------------------------

    def session_text(self) -> bool:
        return False  # ATP-QUIC-003

    def send_frame(self, f: Frame, text: bool, alias: str | None = None) -> int:
        b = encode_binary(f)
        if self.closed:
            return len(b)
        if f.stream_id == 0:
            q = self.qs.get(0)  # before the client opened it there is nowhere to send
            if q is not None and not q.sent_fin:
                self.quic.send_stream_data(0, b)
        else:
            qid = self.atp_q.get(f.stream_id)
            q = self.qs.get(qid) if qid is not None else None
            if q is None or q.sent_fin:
                return len(b)
            # ATP-QUIC-013: the QUIC FIN goes in the same write as the FINAL or ERROR
            ends = f.type == ERROR or (
                f.type == DATA and bool(f.flags & FIN) and not f.flags & CONT
            )
            self.quic.send_stream_data(q.qid, b, end_stream=ends)
            if ends:
                q.sent_fin = True
                if f.type == ERROR and not (q.fin or q.reset):
                    # ATP-QUIC-006: STOP_SENDING with the ERROR's code, never RESET_STREAM
                    code = f.ext.get("error", {}).get("code")
                    with contextlib.suppress(ValueError):
                        self.quic.stop_stream(q.qid, QUIC_CODES.get(code, BARE_RST))
        self.schedule_transmit()
        return len(b)

    def end_session(self, code: str | None) -> None:
        if self.closed:
            return
        self.proto.transmit()  # the ERROR on stream 0 first, where there is one
        self.closed = True
        for st in list(self.streams.values()):
            self.end_stream(st)
        reason = code or ""
        self.quic.close(error_code=QUIC_CODES.get(code, 0x10C) if code else 0, reason_phrase=reason)
        self.proto.transmit()
        self.stop()

    async def drain(self, st: Stream) -> None:
        qid = self.atp_q.get(st.sid)
        while not self.closed and qid is not None and self._unsent(qid) > SEND_BOUND:
            if self._acked is None or self._acked.done():
                self._acked = asyncio.get_running_loop().create_future()
            await self._acked

    def _unsent(self, qid: int) -> int:
        # aioquic keeps what is not yet acknowledged in the sender's buffer; it has no
        # public measure of it
        stream = self.quic._streams.get(qid)
        return len(stream.sender._buffer) if stream is not None else 0

    def schedule_transmit(self) -> None:
        if self._transmit is None:
            self._transmit = asyncio.get_running_loop().call_soon(self._do_transmit)

    def _do_transmit(self) -> None:
        self._transmit = None
        self.proto.transmit()

    def on_datagram(self) -> None:
        if self._acked is not None and not self._acked.done():
            self._acked.set_result(None)

    # --- QUIC events -------------------------------------------------------------------

    def on_event(self, ev: QuicEvent) -> None:
        if isinstance(ev, HandshakeCompleted):
            self.start()
        elif isinstance(ev, ConnectionTerminated):
            self.closed = True
            for st in list(self.streams.values()):
                self.end_stream(st)
            self.stop()
        elif self.closed:
            return
        elif isinstance(ev, StreamDataReceived | StreamReset | StopSendingReceived):
            self.on_stream_event(ev)

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.router.sessions += 1
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self.idle_watch()))
        if self.router.opts.heartbeat_ms:
            self.tasks.append(loop.create_task(self.heartbeats()))

    def stop(self) -> None:
        if self.started:
            self.started = False
            self.router.sessions -= 1
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    def on_stream_event(self, ev: StreamDataReceived | StreamReset | StopSendingReceived) -> None:
        qid = ev.stream_id
        if qid & 2:  # ATP-QUIC-011 (a server-initiated one aioquic refuses itself)
            self.connection_error("EPROTO", "unidirectional QUIC streams are not used")
            return
        q = self.qs.get(qid)
        if q is None:
            if qid != 0 and (qid < self.next_q or qid % 4):
                return  # a stream that gave up its place, or is done and forgotten
            q = self.qs[qid] = QStream(qid, atp=0 if qid == 0 else None)
        if isinstance(ev, StreamDataReceived):
            q.buf += ev.data
            q.fin = q.fin or ev.end_stream
        elif isinstance(ev, StreamReset):
            q.reset = True
        else:
            q.stopped = True
            q.sent_fin = True  # aioquic answered with RESET_STREAM (RFC 9000 §3.5)
        self.last_rx = time.monotonic()
        try:
            self.process()
        except Violation as v:
            self.connection_error(v.code, v.message)
        except Exception as e:  # a failure of ours ends this session only (ATP-ERR-005)
            self.connection_error("EINTERNAL", f"router failure: {type(e).__name__}")
        self.schedule_transmit()

    # --- frames from the QUIC streams --------------------------------------------------

    def process(self) -> None:
        if 0 in self.qs:
            self.read(self.qs[0])
        for q in list(self.qs.values()):
            if self.closed:
                return
            if q.qid and q.atp is not None:
                self.read(q)
        # new QUIC streams, taken in QUIC stream id order (ATP-QUIC-021)
        while not self.closed:
            q = self.qs.get(self.next_q)
            if q is None:
                # the next one in order has not come: later ones wait, bounded all the same
                self._check_waiting()
                return
            if not self._whole_first_frame(q):
                if q.reset or (q.fin and not q.buf):
                    # reset before its first frame (or ended with none): it gives up its
                    # place, and there is nothing to answer
                    self._end_our_side(q)
                    del self.qs[q.qid]
                    self.next_q += 4
                    continue
                if q.fin:
                    self.read(q, first=True)  # a frame cut by the FIN: framing is lost
                self._check_waiting()
                return  # wait for the whole first frame before any later QUIC stream's
            self.next_q += 4
            self.read(q, first=True)

    def _check_waiting(self) -> None:
        """A QUIC stream not yet taken holds at most its first frame and the credit the
        client may send after it; aioquic's own flow control grows without bound."""
        bound = 2 * (HEADER_LEN + MAX_EXT + self.router.opts.max_frame_size)
        bound += self.router.opts.initial_window
        for q in self.qs.values():
            if q.qid and q.atp is None and len(q.buf) > bound:
                raise Violation(
                    "ETOOBIG", f"{len(q.buf)} bytes on QUIC stream {q.qid} before its turn", True
                )

    def _whole_first_frame(self, q: QStream) -> bool:
        if len(q.buf) < HEADER_LEN:
            return False
        ext_len, pl_len = HEADER.unpack_from(q.buf, 0)[8:10]
        if self._oversized(ext_len, pl_len):
            return True  # its header is enough to refuse it (ATP-QUIC-020)
        return len(q.buf) >= HEADER_LEN + ext_len + pl_len

    def _oversized(self, ext_len: int, pl_len: int) -> bool:
        return ext_len + pl_len > self.router.opts.max_frame_size or ext_len > MAX_EXT

    def read(self, q: QStream, first: bool = False) -> None:
        """The frames buffered on one QUIC stream, back to back (ATP-QUIC-003)."""
        while not self.closed:
            if q.skip:
                n = min(q.skip, len(q.buf))
                del q.buf[:n]
                q.skip -= n
                if q.skip:
                    break
            if len(q.buf) < HEADER_LEN:
                break
            ver, ftype, flags, _qos, sid, _m, _f, _t, ext_len, pl_len = HEADER.unpack_from(q.buf)
            if first:
                self.bind(q, ver, sid)
                first = False
            # ATP-QUIC-005 / ATP-QUIC-016: the QUIC stream is checked before any state
            if sid != q.atp:
                where = "the control stream" if q.atp == 0 else f"the QUIC stream of stream {q.atp}"
                raise Violation("EPROTO", f"a frame for stream {sid} on {where}", connection=True)
            if ver != 1:
                raise Violation("EPROTO", f"unsupported version {ver}", connection=True)
            if self._oversized(ext_len, pl_len):  # ATP-QUIC-020: as its header arrives
                if sid == 0:
                    raise Violation("ETOOBIG", "frame over max_frame_size", connection=True)
                del q.buf[:HEADER_LEN]
                q.skip = ext_len + pl_len
                if not q.sent_fin:
                    self.note_syn_id(ftype, flags, sid)
                    self.stream_error(sid, "ETOOBIG", "frame over max_frame_size", False, None)
                continue
            end = HEADER_LEN + ext_len + pl_len
            if len(q.buf) < end:
                break
            raw = bytes(q.buf[:end])
            del q.buf[:end]
            if q.sent_fin and not q.stopped and q.atp:
                continue  # after our FINAL or ERROR: read and discarded (ATP-QUIC-013)
            self.on_binary_frame(raw)
        if self.closed:
            return
        if q.atp == 0 and (q.reset or q.stopped):  # ATP-QUIC-025
            raise Violation("EPROTO", "the client reset or stopped the control stream", True)
        if q.reset:
            self.on_client_reset(q)  # what it sent before has been read
        elif q.fin and not q.fin_done:
            if q.buf or q.skip:
                raise Violation("EPROTO", "the QUIC stream ends inside a frame", connection=True)
            q.fin_done = True
            self.on_client_fin(q)

    def bind(self, q: QStream, ver: int, sid: int) -> None:
        """A new QUIC stream's first frame gives it to an ATP stream for good."""
        if ver != 1:
            raise Violation("EPROTO", f"unsupported version {ver}", connection=True)
        if sid == 0:
            raise Violation("EPROTO", "a stream-0 frame off the control stream", connection=True)
        if sid & 0x80000000:
            raise Violation("EPROTO", "reserved stream id bit set", connection=True)
        if sid <= self.first_max:  # ATP-QUIC-023 (and ATP-QUIC-011's second QUIC stream)
            raise Violation(
                "EPROTO",
                f"QUIC stream {q.qid} opens with stream {sid}, not above {self.first_max}",
                connection=True,
            )
        self.first_max = sid
        q.atp = sid
        self.atp_q[sid] = q.qid

    def on_client_fin(self, q: QStream) -> None:
        if q.atp == 0:  # ATP-QUIC-025
            raise Violation("EPROTO", "the client ended the control stream", connection=True)
        if q.atp is None:
            return
        if q.stopped:
            self.on_client_reset(q)
            return
        st = self.streams.get(q.atp)
        if st is not None and not q.sent_fin:
            # ATP-QUIC-024: no WINDOW_UPDATE can come any more
            self.stream_error(st.sid, "EPROTO", "QUIC FIN before the stream ended", False, None)
        self._forget(q)

    def on_client_reset(self, q: QStream) -> None:
        """ATP-QUIC-006: RESET_STREAM, or STOP_SENDING once the frames before the FIN are
        read, on an open ATP stream is an RST from the client."""
        st = self.streams.get(q.atp) if q.atp else None
        if st is not None:
            self.end_stream(st)
        self._end_our_side(q)
        self._forget(q)

    def _end_our_side(self, q: QStream) -> None:
        if not q.sent_fin:
            q.sent_fin = True
            with contextlib.suppress(ValueError, AssertionError):
                self.quic.send_stream_data(q.qid, b"", end_stream=True)

    def _forget(self, q: QStream) -> None:
        """Both sides over: drop the QUIC stream's state (its ATP id stays used)."""
        if q.sent_fin and (q.fin_done or q.reset):
            self.qs.pop(q.qid, None)
            if q.atp is not None and self.atp_q.get(q.atp) == q.qid:
                del self.atp_q[q.atp]

    def end_stream(self, st: Stream) -> None:
        super().end_stream(st)
        qid = self.atp_q.get(st.sid)
        q = self.qs.get(qid) if qid is not None else None
        if q is not None and not self.closed:
            # a FINAL or ERROR ends our side with its frame; an ERROR may follow at once
            # (stream_error ends the stream first); an RST from the client gets a bare FIN
            asyncio.get_running_loop().call_soon(self._after_end, q)

    def _after_end(self, q: QStream) -> None:
        if not self.closed:
            self._end_our_side(q)
            self._forget(q)
            self.schedule_transmit()


class AtpQuicProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, router: Router, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session = QuicSession(router, self)

    def quic_event_received(self, event: QuicEvent) -> None:
        self.session.on_event(event)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self.session.on_datagram()


async def serve_quic(router: Router, host: str, port: int, cert: str, key: str) -> tuple[str, int]:
    """Serve the QUIC binding; returns the address bound (port 0: any)."""
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],  # a client offering no atp/1 fails the TLS handshake
        # ATP's idle timeout is the one that ends a silent session (with 0x104)
        idle_timeout=max(60.0, 2 * router.idle_timeout_ms / 1000),
    )
    config.load_cert_chain(cert, key)
    server = await serve(
        host,
        port,
        configuration=config,
        create_protocol=lambda *a, **kw: AtpQuicProtocol(*a, router=router, **kw),
    )
    bound = server._transport.get_extra_info("sockname")  # aioquic keeps it private
    return bound[0], bound[1]
