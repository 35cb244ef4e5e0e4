"""The hostile peer's own wire code: ATP frames, a WebSocket client, a QUIC client.

Written from the specification alone (spec/atp-v1.md §3-§5, §13.1, §13.2, RFC 6455), so that
it shares no code with the reference's framing (:mod:`atp_proto.frames`) nor with its
WebSocket or QUIC transports: the 24-byte header is ``struct``, ext is ``cbor2`` or raw bytes,
the WebSocket client is a raw TCP socket with hand-written RFC 6455 framing (it can split a
message into continuation frames at any byte, and send what a library refuses to), and the
QUIC client is aioquic's own sans-IO :class:`QuicConnection` driven over a UDP socket.

Everything is synchronous with timeouts: the fuzzer runs one session at a time per thread
and judges what comes back, so a blocking peer is the simplest honest one.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2

__all__ = [
    "CODES",
    "HEADER",
    "Closed",
    "Frame",
    "QuicPeer",
    "WsPeer",
    "frame",
    "parse",
]

HEADER = struct.Struct("!BBBBIIHHII")
DATA, WINDOW_UPDATE, CAPABILITIES, BUDGET_UPDATE, ERROR = 0, 1, 2, 3, 4
SYN, ACK, MORE, FIN, RST, HB, CONT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
#: §18's error code registry, by index
CODES = (
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


def frame(
    ftype: int,
    flags: int,
    sid: int,
    seq: int = 0,
    *,
    qos: int = 0,
    frag: int = 0,
    ttl: int = 0,
    ext: Any = None,
    payload: Any = None,
    raw_ext: bytes | None = None,
    raw_payload: bytes | None = None,
    version: int = 1,
    ext_len: int | None = None,
    payload_len: int | None = None,
) -> bytes:
    """One binary frame. ``raw_*`` are sent as given; ``*_len`` may lie about the lengths."""
    eb = raw_ext if raw_ext is not None else (cbor2.dumps(ext) if ext else b"")
    if raw_payload is not None:
        pb = raw_payload
    else:
        pb = cbor2.dumps(payload) if payload is not None else b""
    el = len(eb) if ext_len is None else ext_len
    pl = len(pb) if payload_len is None else payload_len
    return HEADER.pack(version, ftype, flags, qos, sid, seq, frag, ttl, el, pl) + eb + pb


@dataclass
class Frame:
    """A frame as the router sent it (lengths checked, ext decoded when it is CBOR)."""

    type: int
    flags: int
    sid: int
    seq: int
    frag: int
    ext: dict[str, Any]
    payload: bytes
    size: int
    text: bool = False  #: it came as a JSON text message

    def code(self) -> str | None:
        err = self.ext.get("error")
        return err.get("code") if self.type == ERROR and isinstance(err, dict) else None


def parse(data: bytes) -> tuple[list[Frame], bytes]:
    """Whole frames at the front of ``data`` and the bytes left over (a partial frame)."""
    out: list[Frame] = []
    pos = 0
    while len(data) - pos >= HEADER.size:
        _v, t, fl, _q, sid, seq, frag, _ttl, el, pl = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + el + pl
        if end > len(data):
            break
        eb = data[pos + HEADER.size : pos + HEADER.size + el]
        try:
            ext = cbor2.loads(eb) if eb else {}
        except Exception:
            ext = {"__undecodable__": eb.hex()}
        out.append(Frame(t, fl, sid & 0x7FFFFFFF, seq, frag, ext, data[end - pl : end], end - pos))
        pos = end
    return out, data[pos:]


def json_to_frame(text: str) -> Frame:
    """A router's JSON text frame (§13.3) in the frame model, for the oracles."""
    import json

    obj = json.loads(text)
    types = {"DATA": 0, "WINDOW_UPDATE": 1, "CAPABILITIES": 2, "BUDGET_UPDATE": 3, "ERROR": 4}
    names = {"SYN": SYN, "ACK": ACK, "MORE": MORE, "FIN": FIN, "RST": RST, "HB": HB, "CONT": CONT}
    t = obj.pop("type", "DATA")
    flags = 0
    for n in obj.pop("flags", []):
        flags |= names.get(n, 0)
    sid = obj.pop("stream_id", 0)
    seq, frag = obj.pop("msg_seq", 0), obj.pop("frag_seq", 0)
    for k in ("v", "qos", "ttl", "payload", "payload_b64"):
        obj.pop(k, None)
    ftype = types.get(t, t) if isinstance(t, str) else int(t)
    num = obj.get("stream_num", sid if isinstance(sid, int) else -1)
    return Frame(int(ftype), flags, int(num), seq, frag, obj, b"", len(text.encode()), True)


class Closed(Exception):
    """The transport closed; ``code`` is the WebSocket close code or QUIC error code."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason}")
        self.code, self.reason = code, reason


@dataclass
class WsPeer:
    """A WebSocket client on a raw socket (RFC 6455 by hand; masks every frame it sends)."""

    host: str
    port: int
    token: str | None = None
    subprotocol: str | None = "atp.v1"
    timeout: float = 5.0
    sock: socket.socket = field(init=False)
    _buf: bytes = b""
    _parts: list[bytes] = field(default_factory=list)
    _text: bool = False
    close_code: int | None = None
    status: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.subprotocol}")
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Closed(None, "handshake: connection closed")
            self._buf += chunk
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ", 2)[1])
        if self.status != 101:
            raise Closed(None, f"handshake refused: HTTP {self.status}")

    # -- sending ---------------------------------------------------------------------
    def _ws_frame(self, opcode: int, data: bytes, fin: bool = True) -> bytes:
        b0 = (0x80 if fin else 0) | opcode
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", b0, 0x80 | 127, n)
        mask = os.urandom(4)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        masked = (int.from_bytes(data, "big") ^ key).to_bytes(n, "big") if n else b""
        return head + mask + masked

    def send(self, data: bytes, *, text: bool = False, split: int | None = None) -> None:
        """One WebSocket message; ``split`` cuts it into two WS fragments at that byte."""
        op = 1 if text else 2
        try:
            if split is None or not 0 < split < len(data):
                self.sock.sendall(self._ws_frame(op, data))
            else:
                a = self._ws_frame(op, data[:split], fin=False)
                b = self._ws_frame(0, data[split:])
                self.sock.sendall(a)
                self.sock.sendall(b)
        except OSError as e:
            raise Closed(self.close_code, f"send: {e}") from e

    def send_text(self, text: str) -> None:
        self.send(text.encode(), text=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(self._ws_frame(8, struct.pack("!H", 1000)))
        self.sock.close()

    # -- receiving -------------------------------------------------------------------
    def _need(self, n: int, deadline: float) -> None:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise
            except OSError as e:
                raise Closed(self.close_code, str(e)) from e
            if not chunk:
                raise Closed(self.close_code, "eof")
            self._buf += chunk

    def recv_message(self, timeout: float) -> tuple[bool, bytes]:
        """The next whole data message as (is_text, bytes); answers pings on the way.

        Raises:
            Closed: the router sent a close frame or the TCP connection ended.
            TimeoutError: nothing whole within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._need(2, deadline)
            b0, b1 = self._buf[0], self._buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                self._need(4, deadline)
                n, pos = struct.unpack_from("!H", self._buf, 2)[0], 4
            elif n == 127:
                self._need(10, deadline)
                n, pos = struct.unpack_from("!Q", self._buf, 2)[0], 10
            self._need(pos + n, deadline)
            data, self._buf = self._buf[pos : pos + n], self._buf[pos + n :]
            op = b0 & 0x0F
            if op == 8:
                self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                raise Closed(self.close_code, data[2:].decode("utf-8", "replace"))
            if op == 9:
                self.sock.sendall(self._ws_frame(10, data))
                continue
            if op == 10:
                continue
            if op in (1, 2):
                self._parts, self._text = [data], op == 1
            else:
                self._parts.append(data)
            if b0 & 0x80:
                return self._text, b"".join(self._parts)

    def recv_frames(self, timeout: float) -> list[Frame]:
        is_text, data = self.recv_message(timeout)
        if is_text:
            return [json_to_frame(data.decode())]
        frames, rest = parse(data)
        if rest:
            frames.append(Frame(-1, 0, 0, 0, 0, {"__partial__": rest.hex()}, b"", len(rest)))
        return frames


class QuicPeer:
    """A QUIC client: aioquic's sans-IO :class:`QuicConnection` over a blocking UDP socket.

    QUIC stream 0 is the control stream (ATP-QUIC-011); :meth:`open` gives the next
    client bidirectional stream for an ATP stream. Certificates are not verified (the
    fuzzer attacks a loopback router with a test certificate)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        import ssl

        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection

        cfg = QuicConfiguration(is_client=True, alpn_protocols=["atp/1"])
        cfg.verify_mode = ssl.CERT_NONE
        cfg.idle_timeout = 30.0
        self.addr = (host, port)
        self.quic = QuicConnection(configuration=cfg)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(self.addr)
        self.bufs: dict[int, bytes] = {}
        self.ended: set[int] = set()  #: QUIC streams the router ended (FIN or reset)
        self.resets: dict[int, int] = {}
        self.inbox: list[Frame] = []
        self.close_code: int | None = None
        self.quic.connect(self.addr, now=time.monotonic())
        self._flush()
        from aioquic.quic import events as qe

        self._qe = qe
        deadline = time.monotonic() + timeout
        self.ready = False
        while not self.ready:
            if self.close_code is not None:
                raise Closed(self.close_code, "handshake")
            self._pump(deadline)

    def _flush(self) -> None:
        for data, _addr in self.quic.datagrams_to_send(now=time.monotonic()):
            with contextlib.suppress(OSError):
                self.sock.send(data)

    def _pump(self, deadline: float) -> None:
        """Wait for one datagram or timer, then process events."""
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError
        timer = self.quic.get_timer()
        wait = deadline - now if timer is None else max(0.0, min(deadline, timer) - now)
        self.sock.settimeout(max(wait, 0.001))
        try:
            data = self.sock.recv(65536)
            self.quic.receive_datagram(data, self.addr, now=time.monotonic())
        except TimeoutError:
            pass
        except OSError:
            pass
        timer = self.quic.get_timer()
        if timer is not None and time.monotonic() >= timer:
            self.quic.handle_timer(now=time.monotonic())
        self._events()
        self._flush()

    def _events(self) -> None:
        qe = self._qe
        while (ev := self.quic.next_event()) is not None:
            if isinstance(ev, qe.HandshakeCompleted):
                self.ready = True
            elif isinstance(ev, qe.StreamDataReceived):
                buf = self.bufs.get(ev.stream_id, b"") + ev.data
                frames, self.bufs[ev.stream_id] = parse(buf)
                self.inbox.extend(frames)
                if ev.end_stream:
                    self.ended.add(ev.stream_id)
            elif isinstance(ev, qe.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
                self.ended.add(ev.stream_id)
            elif isinstance(ev, qe.ConnectionTerminated):
                self.close_code = ev.error_code

    def open(self, unidirectional: bool = False) -> int:
        return int(self.quic.get_next_available_stream_id(is_unidirectional=unidirectional))

    def send(self, qsid: int, data: bytes, end: bool = False) -> None:
        if self.close_code is not None:
            raise Closed(self.close_code)
        try:
            self.quic.send_stream_data(qsid, data, end_stream=end)
        except Exception as e:  # aioquic refuses a write on a stream that ended
            if "reset" in str(e):
                return  # the router stopped the stream (STOP_SENDING, ATP-QUIC-006): dropped
            raise Closed(self.close_code, f"send: {e}") from e
        self._flush()

    def reset(self, qsid: int, code: int = 0xFF) -> None:
        self.quic.reset_stream(qsid, code)
        self._flush()

    def recv_frames(self, timeout: float) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while not self.inbox:
            if self.close_code is not None:
                raise Closed(self.close_code)
            self._pump(deadline)
        out, self.inbox = self.inbox, []
        return out

    def close(self) -> None:
        try:
            self.quic.close(error_code=0)
            self._flush()
        finally:
            self.sock.close()
