"""One hostile session: a link (WebSocket or QUIC), the oracles on what the router sends.

:class:`Link` hides the transport: frames go out coalesced in one WebSocket message (or
split into continuation frames at a chosen byte), or over QUIC on the QUIC stream of their
ATP stream (the control stream for stream 0, ATP-QUIC-002/011), split into writes at
chosen bytes (ATP-FRAME-009). :class:`Session` adds the peer's bookkeeping (the next
stream id, ATP-STREAM-002) and checks every frame the router sends against the rules a
router must keep whatever its peer did:

* every ERROR code is in §18's registry, with a text message (ATP-FRAME-015, ATP-ERR-001);
* the router's messages on a stream start at SYN.msg_seq + 1 and go up by one
  (ATP-SEQ-001, ATP-SEQ-003); MORE on every message but the FIN one (ATP-FLAG-008);
* nothing follows a stream's FIN or ERROR (ATP-STREAM-011, ATP-QUIC-013);
* a connection close comes after an ERROR on stream 0 whose close code the table of §11
  names (ATP-ERR-002, ATP-QUIC-004); at most one CAPABILITIES answer (ATP-SESS-010).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .hostile_wire import (
    CAPABILITIES,
    CODES,
    CONT,
    DATA,
    ERROR,
    FIN,
    HB,
    HEADER,
    MORE,
    SYN,
    WINDOW_UPDATE,
    Closed,
    Frame,
    QuicPeer,
    WsPeer,
    frame,
)

__all__ = ["WS_CLOSE", "Link", "Session", "Violation", "syn"]

#: §11: the WebSocket close code of each error code
WS_CLOSE = {
    "EPROTO": 1002,
    "EDRAINING": 1001,
    "ESEC": 1008,
    "ETOOBIG": 1009,
    "EINTERNAL": 1011,
}
for _i, _c in enumerate(CODES):
    WS_CLOSE.setdefault(_c, 4000 + _i)


class Violation(Exception):
    """An oracle failed: the router broke a rule of the specification."""


@dataclass
class Link:
    """A transport to the router: ``ws://HOST:PORT`` or ``quic://HOST:PORT``."""

    target: str
    token: str | None = None
    subprotocol: str | None = "atp.v1"
    ws: WsPeer | None = None
    quic: QuicPeer | None = None
    qmap: dict[int, int] = field(default_factory=dict)  #: ATP stream -> QUIC stream

    def __post_init__(self) -> None:
        scheme, rest = self.target.split("://", 1)
        host, port = rest.split("/", 1)[0].rsplit(":", 1)
        if scheme == "ws":
            self.ws = WsPeer(host, int(port), token=self.token, subprotocol=self.subprotocol)
        else:
            self.quic = QuicPeer(host, int(port))
            self.qmap[0] = self.quic.open()  # stream 0: the control stream (ATP-QUIC-011)

    @property
    def kind(self) -> str:
        return "ws" if self.ws else "quic"

    def qsid(self, atp_sid: int) -> int:
        assert self.quic is not None
        if atp_sid not in self.qmap:
            self.qmap[atp_sid] = self.quic.open()
        return self.qmap[atp_sid]

    def send(self, frames: list[bytes], split: int | None = None, qsid: int | None = None) -> None:
        """``frames`` in one WebSocket message (split into two WS fragments at ``split``),
        or each on its ATP stream's QUIC stream (the write cut at ``split`` bytes)."""
        if self.ws is not None:
            self.ws.send(b"".join(frames), split=split)
            return
        assert self.quic is not None
        for f in frames:
            sid = HEADER.unpack_from(f)[4] & 0x7FFFFFFF if len(f) >= 24 else 0
            q = qsid if qsid is not None else self.qsid(sid)
            if split is not None and 0 < split < len(f):
                self.quic.send(q, f[:split])
                self.quic.send(q, f[split:])
            else:
                self.quic.send(q, f)

    def send_text(self, text: str) -> None:
        assert self.ws is not None
        self.ws.send_text(text)

    def recv(self, timeout: float) -> list[Frame]:
        if self.ws is not None:
            return self.ws.recv_frames(timeout)
        assert self.quic is not None
        return self.quic.recv_frames(timeout)

    def close_code(self) -> int | None:
        return (
            self.ws.close_code
            if self.ws is not None
            else self.quic.close_code
            if self.quic
            else None
        )

    def close(self) -> None:
        try:
            if self.ws is not None:
                self.ws.close()
            elif self.quic is not None:
                self.quic.close()
        except OSError:
            pass


WINDOW = {"max_parallel": 2, "max_tokens": 100000, "max_usd_micros": 1000000}


def syn(
    sid: int,
    prompt: str = "hello",
    adapter: str = "echo",
    *,
    flags: int = SYN,
    seq: int = 1,
    qos: int = 1,
    ttl: int = 8,
    ext: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    **kw: Any,
) -> bytes:
    """A valid binary SYN for ``adapter`` unless the arguments break it."""
    e: dict[str, Any] = {
        "window": WINDOW,
        "meta": {"task_type": "qa", "adapters": [adapter], **(meta or {})},
    }
    e.update(ext or {})
    payload = {"type": "agent.task", "content": {"prompt": prompt}}
    if "raw_payload" not in kw:
        kw["payload"] = payload
    return frame(DATA, flags, sid, seq, qos=qos, ttl=ttl, ext=e, **kw)


@dataclass
class StreamView:
    syn_seq: int
    next_seq: int | None = None
    ended: str | None = None  #: "fin" or the ERROR code
    frames: list[Frame] = field(default_factory=list)


class Session:
    """A link with the peer's bookkeeping and the router-side oracles (module docstring)."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        caps: bool = True,
        caps_extra: dict[str, Any] | None = None,
        subprotocol: str | None = "atp.v1",
    ) -> None:
        self.link = Link(target, token=token, subprotocol=subprotocol)
        self.max_sid = 0
        self.streams: dict[int, StreamView] = {}
        self.session_errors: list[str] = []
        self.caps_answers = 0
        self.hb_acks: list[bytes] = []
        self.closed: Closed | None = None
        self.violations: list[str] = []
        self.router_caps: dict[str, Any] = {}
        self.peer_max_frame = 1_048_576  #: the max_frame_size this peer advertised
        #: the router's send credit per stream, when a case checks ATP-FLOW-001
        self.recv_credit: dict[int, int] = {}
        #: our send credit per stream (the router's WINDOW_UPDATEs add to it)
        self.send_credit: dict[int, int] = {}
        if caps:
            c: dict[str, Any] = {"versions": [1], **(caps_extra or {})}
            if token and self.link.quic is not None:
                c["auth"] = f"Bearer {token}"  # ATP-QUIC-008
            self.link.send([frame(CAPABILITIES, 0, 0, ext={"caps": c})])

    # -- stream ids ------------------------------------------------------------------
    def new_sid(self, gap: int = 1) -> int:
        self.max_sid += gap
        return self.max_sid

    def track(self, sid: int, syn_seq: int = 1) -> None:
        self.streams[sid] = StreamView(syn_seq)
        self.max_sid = max(self.max_sid, sid)

    # -- receiving with the oracles ----------------------------------------------------
    def _bad(self, rule: str, what: str) -> None:
        self.violations.append(f"{rule}: {what}")

    def _check(self, f: Frame) -> None:
        if f.type == -1:
            self._bad("ATP-WS-001", "router message ends inside a frame")
            return
        if not f.text and f.size - 24 > self.peer_max_frame:
            self._bad(
                "ATP-SESS-007", f"a {f.size}-byte frame over max_frame_size {self.peer_max_frame}"
            )
        if "__undecodable__" in f.ext:
            self._bad("ATP-FRAME-005", f"router ext is not CBOR on stream {f.sid}")
        if f.type == ERROR:
            err = f.ext.get("error")
            code = err.get("code") if isinstance(err, dict) else None
            msg = err.get("message") if isinstance(err, dict) else None
            if code not in CODES:
                self._bad("ATP-ERR-001", f"ERROR code {code!r} is not in the registry")
            if not isinstance(msg, str) or not msg:
                self._bad("ATP-FRAME-015", f"ERROR {code} without a message")
            if "Traceback" in str(msg):
                self._bad("ATP-ERR-006", f"ERROR message holds a traceback: {str(msg)[:200]}")
        if f.sid == 0:
            if f.type == ERROR:
                self.session_errors.append(str(f.code()))
            elif f.type == CAPABILITIES:
                self.router_caps = dict(f.ext.get("caps") or {})
                self.caps_answers += 1
                if self.caps_answers > 1:
                    self._bad("ATP-SESS-010", "router answered CAPABILITIES twice")
            elif f.type == DATA and f.flags & HB:
                self.hb_acks.append(f.payload)
            return
        view = self.streams.get(f.sid)
        if view is None:
            if f.type != ERROR:  # an ERROR may refuse an id the peer never tracked
                self._bad("ATP-STREAM-006", f"frame type {f.type} on unopened stream {f.sid}")
            return
        if view.ended is not None:
            self._bad(
                "ATP-STREAM-011",
                f"frame type {f.type} after the end ({view.ended}) of stream {f.sid}",
            )
            return
        view.frames.append(f)
        if f.type == WINDOW_UPDATE and isinstance(f.ext.get("credit"), int):
            if f.sid in self.send_credit:
                self.send_credit[f.sid] += f.ext["credit"]
            if "window" in f.ext:
                self._bad("ATP-FRAME-021", f"router sent a window on stream {f.sid}")
        if f.type == DATA and f.sid in self.recv_credit:
            self.recv_credit[f.sid] -= f.size
            if self.recv_credit[f.sid] < 0:
                self._bad(
                    "ATP-FLOW-001",
                    f"router overdrew its credit on stream {f.sid} "
                    f"by {-self.recv_credit[f.sid]} bytes",
                )
        if f.type == ERROR:
            view.ended = str(f.code())
        elif f.type == DATA:
            if f.flags & SYN:
                self._bad("ATP-STREAM-006", f"router sent SYN on stream {f.sid}")
            want = view.syn_seq + 1 if view.next_seq is None else view.next_seq
            if (f.frag == 0 or view.next_seq is None) and f.seq != want:
                self._bad("ATP-SEQ-003", f"stream {f.sid}: msg_seq {f.seq}, expected {want}")
            if not f.flags & CONT:
                view.next_seq = f.seq + 1
                if f.flags & FIN:
                    view.ended = "fin"
                    if f.flags & MORE:
                        self._bad("ATP-FLAG-008", f"MORE with FIN on stream {f.sid}")
                elif not f.flags & MORE and not f.text:
                    self._bad("ATP-FLAG-008", f"message without MORE nor FIN on {f.sid}")
            else:
                view.next_seq = f.seq

    def pump(self, timeout: float) -> bool:
        """Read what arrives within ``timeout``; False once the transport has closed."""
        if self.closed is not None:
            return False
        try:
            for f in self.link.recv(timeout):
                self._check(f)
        except TimeoutError:
            pass
        except Closed as c:
            self.closed = c
            self._check_close(c)
            return False
        return True

    def _check_close(self, c: Closed) -> None:
        code = c.code
        if self.link.kind == "quic":
            if (
                code not in (None, 0)
                and not self.session_errors
                and not 0x100 <= code < 0x100 + len(CODES)
            ):
                self._bad("ATP-QUIC-004", f"QUIC close code {code:#x} is not an ATP code")
            return
        if code in (None, 1000, 1005, 1006) or not self.session_errors:
            return
        want = WS_CLOSE.get(self.session_errors[-1])
        if want is not None and code != want:
            self._bad(
                "ATP-ERR-002",
                f"close code {code} after ERROR {self.session_errors[-1]} (§11: {want})",
            )

    def wait(self, cond: Any, timeout: float = 8.0) -> bool:
        """Pump until ``cond()`` holds or the session closes; whether it held."""
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0 or not self.pump(min(left, 0.5)):
                return bool(cond())
        return True

    def ended(self, sid: int, timeout: float = 8.0) -> str | None:
        view = self.streams[sid]
        self.wait(lambda: view.ended is not None, timeout)
        return view.ended

    def wait_closed(self, timeout: float = 5.0) -> bool:
        return self.wait(lambda: self.closed is not None, timeout)

    def probe(self, adapter: str = "echo") -> str | None:
        """A valid stream on this session: its end ("fin" expected, ATP-ERR-001)."""
        sid = self.new_sid()
        self.track(sid)
        try:
            self.link.send([syn(sid, f"probe {sid}", adapter)])
        except Closed as c:
            self.closed = c
            return None
        return self.ended(sid)

    def close(self) -> None:
        self.link.close()
