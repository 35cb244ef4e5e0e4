"""The suite's client end of a router session over QUIC (spec §13.2), independent of the
code it judges: aioquic's sans-IO :class:`~aioquic.quic.connection.QuicConnection` on a
trio UDP socket, frames built and read with :mod:`atp_proto.testing.frames` (``struct`` +
``cbor2``) through the WebSocket driver's mapping functions — never ``atp_proto.frames``
nor ``atp_proto.transports``.

:class:`QuicSession` has the surface of :class:`~conformance.drivers.ws.WsSession`
(``send``, ``send_raw``, ``next``, ``frames``, ``closed``, ``close_code``,
``wait_closed``, ``aclose``), so every transport-neutral scenario runs unchanged. It maps
streams the way the binding says a client must (ATP-QUIC-002, ATP-QUIC-011): stream-0
frames on QUIC stream 0, each ATP stream on its own client-opened bidirectional QUIC
stream, opened by the first frame sent for it (QUIC stream ids increase with ATP ones,
ATP-QUIC-021). It ends its side of a QUIC stream when the router's FIN has arrived
(ATP-QUIC-012), unless ``auto_fin`` is off. Every received frame keeps the QUIC stream it
came on (``_q``); the QUIC-level events (FINs, RESET_STREAM, STOP_SENDING, streams the
router opened, the close code) are kept for the binding's cases.

The CONNECTION_CLOSE code is the authority on why a session ended (ATP-QUIC-014): when the
router closes with 0x100 + i and no ERROR on stream 0 arrived, the session shows the ERROR
of that code (marked ``_from_close``), as a client must treat it. Lower-level methods
(``send_on``, ``reset``, ``stop``, ``open_quic_stream``) let a case break the mapping.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
import struct
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import trio
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from conformance._record import Recorder
from conformance.drivers.ws import from_binary, to_binary
from conformance.roles import RunContext, TargetUnreachable

__all__ = ["ALPN", "ERROR_CODES", "QuicSession", "open_quic", "quic_code"]

#: ATP-QUIC-001
ALPN = "atp/1"
#: the port of a quic:// URL without one (ATP-QUIC-019)
DEFAULT_PORT = 7443
#: the table of spec §11, in order: the QUIC code of ERROR_CODES[i] is 0x100 + i
ERROR_CODES = (
    "EPROTO",
    "ESEQ_RETRY",
    "EWINDOW",
    "EBUDGET",
    "ETIMEOUT",
    "EAGENTDOWN",
    "ESEC",
    "ECONSENSUS",
    "EPREEMPT",
    "EDRAINING",
    "EWINDOW_AGENT",
    "ETOOBIG",
    "EINTERNAL",
)
_HEAD = struct.Struct("!BBBBIIHHII")  # the 24-byte frame header (spec §3)


def quic_code(name: str) -> int:
    """An ATP error code's QUIC application error code (ATP-QUIC-004)."""
    return 0x100 + ERROR_CODES.index(name)


def code_name(code: int | None) -> str | None:
    """The ATP code of a QUIC application error code (None: 0, or not an ATP code)."""
    if code is not None and 0x100 <= code < 0x100 + len(ERROR_CODES):
        return ERROR_CODES[code - 0x100]
    return None


def split_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """Whole frames at the front of ``buf`` (by their header's lengths), and the rest."""
    out: list[bytes] = []
    pos = 0
    while len(buf) - pos >= _HEAD.size:
        fields = _HEAD.unpack_from(buf, pos)
        end = pos + _HEAD.size + fields[8] + fields[9]
        if end > len(buf):
            break
        out.append(buf[pos:end])
        pos = end
    return out, buf[pos:]


class QuicSession:
    """One QUIC connection to the router: ATP frames in and out, QUIC events recorded."""

    text = False
    oversized = False

    def __init__(
        self,
        conn: QuicConnection,
        sock: Any,
        rec: Recorder,
        auto_fin: bool,
        addr: Any,
        raw: socket.socket,
    ) -> None:
        self.conn = conn
        self._addr = addr
        self.raw: socket.socket = raw  #: the same socket, to send without awaiting (UDP)
        self.sock = sock
        self.rec = rec
        self.auto_fin = auto_fin
        self.frames: list[dict[str, Any]] = []  #: every frame received, in order
        self._pending: list[dict[str, Any]] = []
        self._arrived = trio.Event()
        self.closed = False
        self.alpn: str | None = None
        self.handshake = trio.Event()
        self.peer_close: tuple[int, int | None, str] | None = None  #: code, frame type, reason
        self.a2q: dict[int, int] = {0: 0}  #: ATP stream -> our QUIC stream
        self.q2a: dict[int, int] = {0: 0}
        self.buffers: dict[int, bytes] = {}
        self.fins: dict[int, int] = {}  #: QUIC stream -> frames received when its FIN came
        self.resets: dict[int, int] = {}  #: QUIC stream -> RESET_STREAM code from the router
        self.stops: dict[int, int] = {}  #: QUIC stream -> STOP_SENDING code from the router
        self.router_streams: set[int] = set()  #: QUIC streams the router opened (none allowed)
        self.fin_sent: set[int] = set()
        self.after_fin: list[tuple[int, int]] = []  #: (QUIC stream, bytes after its FIN)
        self._wake = trio.Event()
        self._cancel = trio.CancelScope()
        #: a token the first CAPABILITIES carries as caps.auth (ATP-QUIC-008)
        self.auth: str | None = None
        self._caps_sent = False

    # ---------------------------------------------------------------- the QUIC pump

    @property
    def close_code(self) -> int | None:
        return self.peer_close[0] if self.peer_close else None

    def transmit(self) -> None:
        now = trio.current_time()
        for data, _addr in self.conn.datagrams_to_send(now):
            with contextlib.suppress(OSError):  # a full buffer: as a datagram lost
                self.raw.send(data)
        self._wake.set()

    async def _receiver(self) -> None:
        while True:
            try:
                data = await self.sock.recv(65536)
            except OSError as exc:  # ICMP port unreachable: nobody listens there
                self._terminated(None, None, f"UDP: {exc}")
                return
            self.conn.receive_datagram(data, self._addr, trio.current_time())
            self._events()
            self.transmit()

    async def _timer(self) -> None:
        while True:
            self._wake = trio.Event()
            at = self.conn.get_timer()
            with trio.move_on_at(at if at is not None else math.inf):
                await self._wake.wait()
                continue
            self.conn.handle_timer(trio.current_time())
            self._events()
            self.transmit()

    async def _pump(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with self._cancel:
            task_status.started()
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(self._receiver)
                    n.start_soon(self._timer)
            except Exception as exc:  # aioquic failing on the router's input: a case's FAIL
                self._terminated(None, None, f"the QUIC client failed: {exc!r}")

    def _terminated(self, code: int | None, frame_type: int | None, reason: str) -> None:
        if self.peer_close is None:
            self.peer_close = (code if code is not None else -1, frame_type, reason)
            how = "application" if frame_type is None else f"transport (frame {frame_type})"
            self.rec.note(
                f"connection closed: {how} error code "
                f"{'none' if code is None else hex(code)} {reason!r}".strip()
            )
            name = code_name(code) if frame_type is None else None
            if name and not any(
                f.get("type") == "ERROR" and f.get("stream_id") == 0 for f in self.frames
            ):
                synth = {
                    "type": "ERROR",
                    "stream_id": 0,
                    "msg_seq": 0,
                    "frag_seq": 0,
                    "flags": [],
                    "size": 0,
                    "error": {"code": name, "message": f"(CONNECTION_CLOSE {code:#x})"},
                    "_from_close": True,
                    "_q": 0,
                }
                self.frames.append(synth)
                self._pending.append(synth)
        self.closed = True
        self.handshake.set()
        self._arrived.set()

    def _events(self) -> None:
        while (ev := self.conn.next_event()) is not None:
            if isinstance(ev, qe.StreamDataReceived):
                self._data(ev.stream_id, ev.data, ev.end_stream)
            elif isinstance(ev, qe.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
                self.rec.note(f"RESET_STREAM on QUIC stream {ev.stream_id}: {ev.error_code:#x}")
            elif isinstance(ev, qe.StopSendingReceived):
                q = ev.stream_id
                self.stops[q] = ev.error_code
                self.rec.note(f"STOP_SENDING on QUIC stream {q}: {ev.error_code:#x}")
                if q not in self.fin_sent:  # answered with RESET_STREAM (ATP-QUIC-006)
                    self.fin_sent.add(q)
                    with contextlib.suppress(Exception):
                        self.conn.reset_stream(q, ev.error_code)
            elif isinstance(ev, qe.HandshakeCompleted):
                self.alpn = ev.alpn_protocol
                self.handshake.set()
            elif isinstance(ev, qe.ConnectionTerminated):
                self._terminated(ev.error_code, ev.frame_type, ev.reason_phrase)

    def _data(self, q: int, data: bytes, end: bool) -> None:
        if q & 1:  # bit 0 set: server-initiated (RFC 9000 §2.1)
            if q not in self.router_streams:
                self.rec.note(f"the router opened QUIC stream {q}")
            self.router_streams.add(q)
        if q in self.fins:
            self.after_fin.append((q, len(data)))
            return
        whole, rest = split_frames(self.buffers.get(q, b"") + data)
        self.buffers[q] = rest
        if whole:
            chunk = b"".join(whole)
            self.rec.received(chunk)
            try:
                got = from_binary(chunk)
            except ValueError as exc:
                got = [{"type": "UNDECODABLE", "why": str(exc), "stream_id": -1, "flags": []}]
            for f in got:
                f["_q"] = q
            self.frames += got
            self._pending += got
            self._arrived.set()
        if end:
            self.fins[q] = len(self.frames)
            if rest:
                self.rec.note(f"QUIC stream {q} ended inside a frame ({len(rest)} bytes)")
            if self.auto_fin and q and not q & 3 and q not in self.fin_sent:
                self.send_on(q, b"", end=True)  # ATP-QUIC-012: our side follows the router's

    # ---------------------------------------------------------------- ATP surface

    @property
    def fresh_sid(self) -> int:
        """The lowest odd ATP id above every one a QUIC stream of ours was opened for:
        a new QUIC stream must name one (ATP-QUIC-023), a SYN or not."""
        top = max(self.a2q)
        return top + 2 if top % 2 else top + 1

    def quic_stream_for(self, sid: int) -> int:
        """The QUIC stream of ATP stream ``sid`` (a new one the first time)."""
        q = self.a2q.get(sid)
        if q is None:
            q = self.conn.get_next_available_stream_id()
            self.a2q[sid], self.q2a[q] = q, sid
        return q

    async def send(self, m: Mapping[str, Any]) -> None:
        if (
            self.auth
            and not self._caps_sent
            and m.get("type") == "CAPABILITIES"
            and not m.get("stream_id")
        ):
            caps = m.get("caps")
            if isinstance(caps, Mapping) and "auth" not in caps:  # ATP-QUIC-008
                m = dict(m, caps=dict(caps, auth=f"Bearer {self.auth}"))
        if m.get("type") == "CAPABILITIES":
            self._caps_sent = True
        await self.send_raw(to_binary(m))

    async def send_raw(self, data: bytes | str) -> None:
        """Bytes of frames, each on its ATP stream's QUIC stream (a text message, which
        the binding does not allow, and trailing bytes of no whole frame go on QUIC
        stream 0 or the stream their header names)."""
        raw = data.encode() if isinstance(data, str) else data
        if self.auth and not self._caps_sent:
            self._caps_sent = True
            if not (len(raw) > 7 and raw[1] == 2 and raw[4:8] == bytes(4)):
                # the session authenticates before anything else (ATP-QUIC-008)
                caps = {"versions": [1], "auth": f"Bearer {self.auth}"}
                self.send_on(0, to_binary({"type": "CAPABILITIES", "stream_id": 0, "caps": caps}))
        whole, rest = split_frames(raw)
        runs: list[tuple[int, bytes]] = []
        for frame in whole:
            q = self.quic_stream_for(int.from_bytes(frame[4:8], "big"))
            if runs and runs[-1][0] == q:
                runs[-1] = (q, runs[-1][1] + frame)
            else:
                runs.append((q, frame))
        if rest:
            q = self.quic_stream_for(int.from_bytes(rest[4:8], "big")) if len(rest) >= 8 else 0
            runs.append((q, rest))
        for q, chunk in runs:
            self.send_on(q, chunk)

    def send_on(self, q: int, data: bytes, end: bool = False) -> None:
        """Bytes on QUIC stream ``q`` as they are (recorded), FIN with them if ``end``."""
        if self.closed:
            return
        if data:
            self.rec.sent(data)
            if q:
                self.rec.note(f"(on QUIC stream {q})")
        elif end:
            self.rec.note(f"FIN on QUIC stream {q}")
        try:
            self.conn.send_stream_data(q, data, end_stream=end)
        except Exception as exc:  # e.g. after our FIN: the case's own mistake, shown
            self.rec.note(f"cannot send on QUIC stream {q}: {exc}")
            return
        if end:
            self.fin_sent.add(q)
        self.transmit()

    def open_quic_stream(self, unidirectional: bool = False) -> int:
        """A new client-opened QUIC stream not tied to any ATP stream."""
        return self.conn.get_next_available_stream_id(is_unidirectional=unidirectional)

    def reset(self, q: int, code: int) -> None:
        """RESET_STREAM on QUIC stream ``q``."""
        self.rec.note(f"RESET_STREAM on QUIC stream {q} ({code:#x})")
        self.conn.reset_stream(q, code)
        self.fin_sent.add(q)
        self.transmit()

    def stop(self, q: int, code: int) -> None:
        """STOP_SENDING on QUIC stream ``q``."""
        self.rec.note(f"STOP_SENDING on QUIC stream {q} ({code:#x})")
        self.conn.stop_stream(q, code)
        self.transmit()

    def close_connection(self, code: int, reason: str = "") -> None:
        """CONNECTION_CLOSE with application error ``code``."""
        self.rec.note(f"CONNECTION_CLOSE {code:#x} sent")
        self.conn.close(error_code=code, reason_phrase=reason)
        self.transmit()

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next frame, or None when the time bound passes or the connection closed."""
        with trio.move_on_after(timeout):
            while not self._pending:
                if self.closed:
                    return None
                self._arrived = trio.Event()
                await self._arrived.wait()
            return self._pending.pop(0)
        return None

    async def wait_closed(self, timeout: float) -> bool:
        """Read (and keep) frames until the connection closes; False if it stays open."""
        with trio.move_on_after(timeout):
            while not self.closed:
                await self.next(timeout)
            return True
        return False

    async def aclose(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.conn.close(error_code=0x0)  # a normal close (ATP-QUIC-015)
                self.transmit()
            self.closed = True
        self._cancel.cancel()
        self.sock.close()


async def open_quic(
    ctx: RunContext,
    rec: Recorder,
    *,
    alpn: Sequence[str] = (ALPN,),
    auto_fin: bool = True,
    wait: bool = True,
    auth: str | None = None,
) -> QuicSession:
    """A QUIC connection to ``quic://HOST:PORT`` (certificate checked against ``--ca`` or
    the system's store unless ``--insecure``); ``wait``: until the handshake is done.

    Raises:
        TargetUnreachable: no handshake (nothing answers there, the certificate is not
            trusted, or the router refused ALPN atp/1).
    """
    u = urlsplit(ctx.target)
    if u.scheme != "quic" or not u.hostname:
        raise TargetUnreachable(f"a QUIC target is quic://HOST:PORT (got {ctx.target!r})")
    port = u.port or DEFAULT_PORT
    conf = QuicConfiguration(is_client=True, alpn_protocols=list(alpn), server_name=u.hostname)
    conf.max_datagram_size = 1350
    if ctx.options.get("insecure"):
        conf.verify_mode = ssl.CERT_NONE
    elif ctx.options.get("ca"):
        conf.load_verify_locations(cafile=str(ctx.options["ca"]))
    else:
        conf.load_verify_locations(cafile=ssl.get_default_verify_paths().cafile)
    try:
        info = await trio.socket.getaddrinfo(u.hostname, port, type=trio.socket.SOCK_DGRAM)
    except OSError as exc:
        raise TargetUnreachable(f"cannot resolve {u.hostname}: {exc}") from None
    family, _, _, _, addr = info[0]
    raw = socket.socket(family, socket.SOCK_DGRAM)
    raw.setblocking(False)
    raw.connect(addr)
    sock = trio.socket.from_stdlib_socket(raw)
    conn = QuicConnection(configuration=conf)
    session = QuicSession(conn, sock, rec, auto_fin, addr, raw)
    session.auth = auth
    conn.connect(addr, now=trio.current_time())
    conn.send_stream_data(0, b"")  # QUIC stream 0 is the control stream (ATP-QUIC-011)
    trio.lowlevel.spawn_system_task(_start, session)
    session.transmit()
    rec.note(f"QUIC to {u.hostname}:{port}, ALPN {list(alpn)}")
    if wait:
        with trio.move_on_after(ctx.timeout(5)):
            await session.handshake.wait()
        if session.alpn is None:
            why = session.peer_close[2] if session.peer_close else "no answer within 5 s"
            await session.aclose()
            raise TargetUnreachable(f"no QUIC handshake with {ctx.target}: {why}")
    return session


async def _start(session: QuicSession) -> None:
    with contextlib.suppress(BaseException):  # a system task must not raise (trio aborts)
        await session._pump()
