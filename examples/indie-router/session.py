"""The session logic of the indie router, shared by its WebSocket and QUIC bindings:
CAPABILITIES, heartbeats, the idle timeout, the stream table, sequencing and reassembly,
credit and budget windows, ttl, the error scopes of §11, and the echo "model". Written
from spec/atp-v1.md alone (no atp_proto).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2
from atpwire import (
    ACK,
    BUDGET_UPDATE,
    CAPABILITIES,
    CONT,
    DATA,
    ERROR,
    FIN,
    HB,
    HEADER,
    HEADER_LEN,
    MORE,
    RESERVED_KEYS,
    RST,
    SYN,
    U31,
    U32,
    U64,
    WINDOW_UPDATE,
    CborError,
    Frame,
    TextParse,
    Violation,
    check_cbor_payload,
    decode_ext,
    encode_text,
    parse_json_text,
    text_flags,
    text_frame,
    text_header,
)

# §12 defaults (ours and the peer's until its CAPABILITIES arrive)
MAX_FRAME = 1_048_576
MAX_EXT = 65_536
MAX_MESSAGE = 4_194_304
MAX_STREAMS = 100
INITIAL_WINDOW = 262_144
MAX_TEXT = 1_048_576
MAX_SESSIONS = 10_000
HANDSHAKE_TIMEOUT = 10.0
ALIAS_MEMORY = 1024
META_LISTS = ("tool_permissions", "data_scope", "adapters")
STRATEGIES = {"consensus", "cascade", "first_good", "quorum", "best_confidence", "vote"}


def _uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_window(w: Any) -> dict[str, int]:
    if not isinstance(w, dict):
        raise Violation("EPROTO", "window is not a map")
    out = {}
    for k in ("max_parallel", "max_tokens", "max_usd_micros"):
        if k in w:
            if not _uint(w[k]) or w[k] > U64:
                raise Violation("EPROTO", f"window.{k} is not an unsigned integer")
            out[k] = w[k]
    return out


def _comparator_ok(c: Any) -> bool:
    if not isinstance(c, str):
        return False
    if c in ("exact", "numeric"):
        return True
    if not c.startswith("json:") or len(c) > 128:
        return False
    parts = c[5:].split(".")
    if not 1 <= len(parts) <= 16:
        return False
    return all(p and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in p) for p in parts)


def _error_map(err: Any) -> bool:
    """An ERROR's ext ``error``: a map with a text ``code`` and ``message`` (ATP-FRAME-015)."""
    return (
        isinstance(err, dict)
        and isinstance(err.get("code"), str)
        and isinstance(err.get("message"), str)
    )


def check_meta(meta: Any) -> None:
    """ATP-FRAME-025 (with §12, ATP-SEC-016, ATP-STRAT-009, ATP-FINAL-001): refuse,
    naming the key."""
    if not isinstance(meta, dict):
        raise Violation("EPROTO", "meta is not a map")
    for k in META_LISTS:
        if k in meta:
            v = meta[k]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise Violation("EPROTO", f"meta.{k} is not a list of text")
            if k != "adapters" and (len(v) > 64 or not all(1 <= len(x) <= 128 for x in v)):
                raise Violation("EPROTO", f"meta.{k}: at most 64 names of 1 to 128 characters")
    if "task_type" in meta and not isinstance(meta["task_type"], str):
        raise Violation("EPROTO", "meta.task_type is not text")
    for k in ("fanout", "quorum"):
        if k in meta and not (_uint(meta[k]) and 1 <= meta[k] <= 16):
            raise Violation("EPROTO", f"meta.{k} is not an integer 1...16")
    for k in ("min_confidence", "min_quality"):
        if k in meta and not (_num(meta[k]) and math.isfinite(meta[k])):
            raise Violation("EPROTO", f"meta.{k} is not a number")
    if "strategy" in meta and meta["strategy"] not in STRATEGIES:
        raise Violation("EPROTO", "meta.strategy is not a strategy this router knows")
    if "comparator" in meta and not _comparator_ok(meta["comparator"]):
        raise Violation("EPROTO", "meta.comparator is not exact, numeric or json:FIELD")
    if "hedge" in meta and not isinstance(meta["hedge"], bool):
        raise Violation("EPROTO", "meta.hedge is not a boolean")
    # ATP-FINAL-001: this router always sends the answer in full (ATP-FINAL-002 allows it)
    if "final_answer" in meta and meta["final_answer"] not in ("full", "streamed"):
        raise Violation("EPROTO", 'meta.final_answer is not "full" or "streamed"')


def check_common_ext(ext: dict[str, Any], stream0: bool) -> None:
    if "session_id" in ext:
        s = ext["session_id"]
        if not isinstance(s, str) or len(s) > 128:
            raise Violation(
                "EPROTO", "session_id is not text of at most 128 characters", connection=stream0
            )


def tokens_of(b: bytes) -> int:
    return max(1, (len(b) + 3) // 4)


@dataclass
class Stream:
    sid: int
    alias: str | None
    text: bool
    syn_seq: int
    recv_seq: int  # msg_seq of the message being received (or next one)
    recv_frag: int  # frag_seq expected next
    in_message: bool
    msg_size: int
    half_closed: bool = False
    recv_credit: int = INITIAL_WINDOW
    unreturned: int = 0
    send_credit: int = INITIAL_WINDOW
    send_w: int = INITIAL_WINDOW
    unlimited_send: bool = False
    syn_ext: dict[str, Any] = field(default_factory=dict)
    syn_payload: bytearray = field(default_factory=bytearray)
    qos: int = 0
    ttl: int = 0
    window: dict[str, int] = field(default_factory=dict)
    used_tokens: int = 0
    used_usd: int = 0
    next_send_seq: int = 0
    first_data_sent: bool = False
    credit_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    ttl_handle: asyncio.TimerHandle | None = None
    started: float = field(default_factory=time.monotonic)
    ended: bool = False


@dataclass
class Options:
    """Choices the spec leaves to the router, to show the suite accepts each of them."""

    idle_timeout_ms: int = 60_000
    fragment: int = 0  # cut every payload into fragments of at most this many bytes
    no_partial: bool = False  # answer with the FINAL alone
    coalesce: bool = False  # binary frames ready together go in one message (ATP-WS-005)
    budget_updates: bool = False  # BUDGET_UPDATE before each message (ATP-BUDGET-007)
    eager_credit: bool = False  # return credit after every frame consumed
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # TLS-less upgrade bound (ATP-WS-014)
    max_sessions: int = MAX_SESSIONS  # beyond it: HTTP 503 with Retry-After (ATP-LIMIT-003)
    heartbeat_ms: int = 0  # send our own heartbeats this often (0: never; at least 1000)
    initial_window: int = INITIAL_WINDOW  # ours, advertised when not the default
    text_credit_unlimited: bool = False  # ATP-FLOW-011: no receive credit on text streams
    max_frame_size: int = MAX_FRAME  # ours (what we accept), advertised when not the default
    max_message_size: int = MAX_MESSAGE
    max_streams: int = MAX_STREAMS


class Router:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.idle_timeout_ms = opts.idle_timeout_ms
        self.sessions = 0
        self.handshaking = 0


class Session:
    """The session logic shared by the bindings: stream table, sequencing, credit, budget,
    errors and the echo model. A binding supplies send_frame, end_session and drain, and
    feeds whole binary frames to on_binary_frame (text frames to on_text)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.closed = False
        self.last_text = False
        self.got_caps = False
        self.answered_caps = False
        # the peer's limits
        self.peer_max_frame = MAX_FRAME
        self.peer_max_message = MAX_MESSAGE
        self.peer_initial_window = INITIAL_WINDOW
        self.peer_max_streams = MAX_STREAMS
        self.highest = 0
        self.streams: dict[int, Stream] = {}
        self.aliases: dict[str, int] = {}  # alias -> id (open or recently closed)
        self.closed_alias_order: list[str] = []
        self.session_id: str | None = None
        self.last_rx = time.monotonic()

    # --- the binding's part -----------------------------------------------------------

    def send_frame(self, f: Frame, text: bool, alias: str | None = None) -> int:
        """Send one frame; returns its credit cost."""
        raise NotImplementedError

    def flush(self) -> None:
        """Send what send_frame held back (a binding that holds nothing back: nothing)."""

    def end_session(self, code: str | None) -> None:
        """Close the transport: for the ATP error code (its close code), or normally."""
        raise NotImplementedError

    async def drain(self, st: Stream) -> None:
        """Wait while the transport's send buffer for the stream is above its bound."""
        raise NotImplementedError

    # --- output ----------------------------------------------------------------

    def session_text(self) -> bool:
        return self.last_text

    def send_error(
        self,
        sid: int,
        code: str,
        message: str,
        text: bool,
        alias: str | None = None,
        retry_after_ms: int | None = None,
        stream_num: int | None = None,
    ) -> None:
        err: dict[str, Any] = {"code": code, "message": message}
        if retry_after_ms is not None:
            err["retry_after_ms"] = retry_after_ms
        ext: dict[str, Any] = {"error": err}
        if stream_num is not None:
            ext["stream_num"] = stream_num
        flags = RST if sid != 0 else 0
        self.send_frame(Frame(type=ERROR, flags=flags, stream_id=sid, ext=ext), text, alias)

    def connection_error(self, code: str, message: str) -> None:
        if self.closed:
            return
        self.send_error(0, code, message, self.session_text())
        self.end_session(code)

    # --- streams -----------------------------------------------------------------

    def end_stream(self, st: Stream) -> None:
        if st.ended:
            return
        st.ended = True
        self.streams.pop(st.sid, None)
        if st.ttl_handle is not None:
            st.ttl_handle.cancel()
        if st.task is not None and asyncio.current_task() is not st.task:
            st.task.cancel()
        st.credit_event.set()
        if st.alias is not None:
            self.closed_alias_order.append(st.alias)
            if len(self.closed_alias_order) > ALIAS_MEMORY:
                old = self.closed_alias_order.pop(0)
                if self.aliases.get(old) is not None and self.aliases[old] not in self.streams:
                    del self.aliases[old]

    def stream_error(
        self,
        sid: int,
        code: str,
        message: str,
        text: bool,
        alias: str | None,
        retry_after_ms: int | None = None,
        stream_num: int | None = None,
    ) -> None:
        st = self.streams.get(sid)
        if st is not None:
            self.end_stream(st)
            text, alias = st.text, st.alias
            if alias is not None:
                stream_num = sid
        elif 0 < sid <= self.highest and stream_num is None and not self._refusing:
            return  # a stream that was opened and is closed: discarded (ATP-FRAME-023)
        if code == "ESEQ_RETRY" and retry_after_ms is None:
            retry_after_ms = 0
        self.send_error(sid, code, message, text, alias, retry_after_ms, stream_num)

    _refusing = False

    # --- input -------------------------------------------------------------------

    async def idle_watch(self) -> None:
        limit = self.router.idle_timeout_ms / 1000.0
        while not self.closed:
            await asyncio.sleep(min(0.25, limit / 4))
            if self.streams:
                self.last_rx = max(self.last_rx, time.monotonic() - limit / 2)
                continue
            if time.monotonic() - self.last_rx >= limit:
                self.connection_error("ETIMEOUT", "idle session timed out")
                return

    async def heartbeats(self) -> None:
        """Our own heartbeats (the client must answer them, ATP-TIME-002), paced no more
        often than once a second (ATP-SESS-008)."""
        n = 0
        while not self.closed:
            await asyncio.sleep(max(1000, self.router.opts.heartbeat_ms) / 1000)
            n += 1
            self.send_frame(
                Frame(type=DATA, flags=HB, payload=f"indie-{n}".encode()), self.last_text
            )
            self.flush()

    def note_syn_id(self, ftype: int, flags: int, sid: int) -> None:
        """ATP-STREAM-002: a SYN's id is used once read, whatever refuses it."""
        if ftype == DATA and flags & SYN and sid > self.highest:
            self.highest = sid
            self._refusing = True

    # binary ------------------------------------------------------------------------

    def on_binary_frame(self, raw: bytes) -> None:
        ver, ftype, flags, qos, sid, mseq, fseq, ttl, ext_len, pl_len = HEADER.unpack_from(raw, 0)
        if ver != 1:
            raise Violation("EPROTO", f"unsupported version {ver}", connection=True)
        if sid & 0x80000000:
            raise Violation("EPROTO", "reserved stream id bit set", connection=True)
        self._refusing = False
        if ftype not in (DATA, WINDOW_UPDATE, CAPABILITIES, BUDGET_UPDATE, ERROR):
            if ext_len + pl_len > self.router.opts.max_frame_size or ext_len > MAX_EXT:
                if sid == 0:
                    raise Violation("ETOOBIG", "frame over max_frame_size", connection=True)
                self.stream_error(sid, "ETOOBIG", "frame over max_frame_size", False, None)
            return  # ATP-FRAME-010
        self.note_syn_id(ftype, flags, sid)
        if ext_len + pl_len > self.router.opts.max_frame_size or ext_len > MAX_EXT:
            if sid == 0:
                raise Violation("ETOOBIG", "frame over max_frame_size", connection=True)
            self.stream_error(sid, "ETOOBIG", "frame over max_frame_size", False, None)
            return
        try:
            ext = decode_ext(raw[HEADER_LEN : HEADER_LEN + ext_len])
        except CborError as e:
            self.reject(sid, "EPROTO", f"ext: {e}", False, None)
            return
        bad = RESERVED_KEYS & ext.keys()
        if bad:
            self.reject(sid, "EPROTO", f"reserved key {sorted(bad)[0]!r} in ext", False, None)
            return
        f = Frame(
            type=ftype,
            flags=flags,
            qos=qos,
            stream_id=sid,
            msg_seq=mseq,
            frag_seq=fseq,
            ttl=ttl,
            ext=ext,
            ext_len=ext_len,
            payload=raw[HEADER_LEN + ext_len :],
            cost=len(raw),
        )
        self.on_frame(f)

    def reject(self, sid: int, code: str, msg: str, text: bool, alias: str | None) -> None:
        if sid == 0:
            raise Violation(code, msg, connection=True)
        self.stream_error(sid, code, msg, text, alias)

    # text --------------------------------------------------------------------------

    def on_text(self, s: str, nbytes: int) -> None:
        try:
            obj, problem = parse_json_text(s)
        except TextParse as e:
            raise Violation("EPROTO", e.message, connection=True) from None
        try:
            hdr = text_header(obj)
        except TextParse as e:
            raise Violation("EPROTO", e.message, connection=True) from None
        if hdr.ignore:
            return
        self._refusing = False
        flags = text_flags(obj)
        is_syn = hdr.type == DATA and flags is not None and bool(flags & SYN)
        alias = hdr.alias
        stream_num: int | None = None
        if alias is not None:
            known = self.aliases.get(alias)
            if is_syn:
                if known is not None and known in self.streams:
                    sid = known
                else:
                    sid = self.highest + 1
                    self.highest = sid
                    self.aliases[alias] = sid
                    self._refusing = True
                    stream_num = sid
            elif known is not None:
                sid = known
            else:
                if hdr.type == ERROR:
                    return  # ATP-ERR-011 (a malformed one would need a check; discard)
                self._send_alias_error(alias, "EPROTO", f"no stream under alias {alias!r}")
                return
        else:
            sid = hdr.stream_id or 0
            if is_syn and sid > self.highest:
                self.highest = sid
                self._refusing = True
        if problem is not None:
            self.reject_text(sid, alias, f"malformed text frame: {problem}", stream_num)
            return
        try:
            f = text_frame(obj, hdr, sid, nbytes)
        except Violation:
            raise
        except ValueError as e:
            self.reject_text(sid, alias, f"malformed text frame: {e}", stream_num)
            return
        try:
            check_common_ext(f.ext, sid == 0)
        except Violation as v:
            if v.connection:
                raise
            self.reject_text(sid, alias, v.message, stream_num)
            return
        if "session_id" in f.ext:
            self.session_id = f.ext["session_id"]
        self.on_frame(f)

    def _send_alias_error(self, alias: str, code: str, msg: str) -> None:
        err = {"code": code, "message": msg}
        self.send_frame(Frame(type=ERROR, flags=RST, stream_id=0, ext={"error": err}), True, alias)

    def reject_text(self, sid: int, alias: str | None, msg: str, stream_num: int | None) -> None:
        if sid == 0:
            raise Violation("EPROTO", msg, connection=True)
        st = self.streams.get(sid)
        if st is None and alias is not None and stream_num is None and sid <= self.highest:
            return  # closed stream under a remembered alias: discarded
        self.stream_error(sid, "EPROTO", msg, True, alias, stream_num=stream_num if alias else None)

    # frames of either encoding -------------------------------------------------------

    def on_frame(self, f: Frame) -> None:
        sid = f.stream_id
        text = f.text
        if not f.text:
            try:
                check_common_ext(f.ext, sid == 0)
            except Violation as v:
                self.reject(sid, v.code, v.message, False, None)
                return None
        if sid == 0:
            self.on_stream0(f)
            return None
        alias = f.alias
        snum = sid if (alias is not None and self._refusing) else None

        def refuse(code: str, msg: str, retry: int | None = None) -> None:
            self.stream_error(sid, code, msg, text, alias, retry, snum)

        # stateless rules first (ATP-FRAME-023)
        if f.qos > 3:
            return refuse("EPROTO", f"qos {f.qos} out of range")
        if f.type == CAPABILITIES:
            return refuse("EPROTO", "CAPABILITIES on a stream other than 0")
        if f.type == BUDGET_UPDATE:
            return refuse("EPROTO", "BUDGET_UPDATE is sent by routers only")
        if f.type == ERROR:
            err = f.ext.get("error")
            if not _error_map(err):
                return refuse("EPROTO", "ERROR without an error map with text code and message")
        if f.type == WINDOW_UPDATE:
            if "credit" not in f.ext and "window" not in f.ext:
                return refuse("EPROTO", "WINDOW_UPDATE without credit or window")
            if "credit" in f.ext:
                c = f.ext["credit"]
                if not _uint(c) or not 1 <= c <= U31:
                    return refuse("EPROTO", "credit not an integer in 1 ... 2^31-1")
            if "window" in f.ext:
                try:
                    check_window(f.ext["window"])
                except Violation as v:
                    return refuse("EPROTO", v.message)
        if f.type == DATA:
            if f.flags & SYN and f.frag_seq != 0:
                return refuse("EPROTO", "SYN on a fragment other than 0")
            if f.flags & FIN and f.flags & CONT:
                return refuse("EPROTO", "FIN on a fragment that is not the last")
            if f.ext_len and f.frag_seq != 0:
                return refuse("EPROTO", "ext on a fragment other than 0")
            if f.flags & SYN:
                try:
                    if "window" in f.ext:
                        check_window(f.ext["window"])
                    if "meta" in f.ext:
                        check_meta(f.ext["meta"])
                except Violation as v:
                    return refuse("EPROTO", v.message)
        # stateful rules
        st = self.streams.get(sid)
        if f.type == ERROR:
            if st is not None:
                self.end_stream(st)
            return None  # closed or never opened: discarded (ATP-ERR-011)
        if f.type == WINDOW_UPDATE:
            if st is None:
                if sid > self.highest:
                    return refuse("EPROTO", "WINDOW_UPDATE on a stream never opened")
                return None
            self.on_window_update(st, f)
            return None
        # DATA
        if f.flags & SYN:
            if st is not None:
                return refuse("EPROTO", "SYN on a stream that is open")
            if not self._refusing:
                # ATP-STREAM-002 (a SYN is never discarded as a late frame, ATP-FLAG-004)
                self._refusing = True
                return refuse("EPROTO", "SYN on a stream id not greater than every id used")
            self.open_stream(f)
            return None
        if st is None:
            if sid > self.highest:
                return refuse("EPROTO", "DATA on a stream never opened")
            return None  # ATP-FLAG-004
        if f.flags & RST:
            self.end_stream(st)
            return None
        self.on_data(st, f)
        return None

    def on_stream0(self, f: Frame) -> None:
        if f.qos > 3:
            raise Violation("EPROTO", "qos out of range on stream 0", connection=True)
        if f.type == DATA:
            if not f.flags & HB:
                raise Violation("EPROTO", "DATA on stream 0 without HB", connection=True)
            if len(f.payload) > 64:
                raise Violation("ETOOBIG", "heartbeat payload over 64 bytes", connection=True)
            if f.flags & ACK:
                return
            self.send_frame(Frame(type=DATA, flags=HB | ACK, payload=f.payload), f.text)
            return
        if f.type in (WINDOW_UPDATE, BUDGET_UPDATE):
            raise Violation("EPROTO", "WINDOW_UPDATE or BUDGET_UPDATE on stream 0", connection=True)
        if f.type == ERROR:
            err = f.ext.get("error")
            if not _error_map(err):
                raise Violation("EPROTO", "ERROR without an error map", connection=True)
            if err["code"] != "EDRAINING":
                self.end_session(None)
            return
        if f.type == CAPABILITIES:
            caps = f.ext.get("caps")
            if not isinstance(caps, dict):
                raise Violation("EPROTO", "CAPABILITIES without a caps map", connection=True)
            vers = caps.get("versions")
            if not isinstance(vers, list) or not vers:
                raise Violation("EPROTO", "caps.versions is not a non-empty array", connection=True)
            if 1 not in [v for v in vers if _uint(v)]:
                raise Violation("EPROTO", "caps.versions does not include 1", connection=True)
            self.apply_caps(caps)
            if not self.answered_caps:
                self.answered_caps = True
                mine: dict[str, Any] = {
                    "versions": [1],
                    "features": ["json", "fragmentation", "budget", "heartbeat"],
                }
                if self.router.idle_timeout_ms != 60_000:  # §6.1: limits off the default
                    mine["idle_timeout_ms"] = self.router.idle_timeout_ms
                o = self.router.opts
                limits = (
                    ("initial_window", o.initial_window, INITIAL_WINDOW),
                    ("max_frame_size", o.max_frame_size, MAX_FRAME),
                    ("max_message_size", o.max_message_size, MAX_MESSAGE),
                    ("max_streams", o.max_streams, MAX_STREAMS),
                )
                mine.update({k: v for k, v, default in limits if v != default})
                self.send_frame(Frame(type=CAPABILITIES, ext={"caps": mine}), f.text)

    def apply_caps(self, caps: dict[str, Any]) -> None:
        self.got_caps = True
        v = caps.get("max_frame_size")
        if _uint(v) and v >= 1024:
            self.peer_max_frame = v
        v = caps.get("initial_window")
        if _uint(v) and 1 <= v <= U31:
            self.peer_initial_window = v
        v = caps.get("max_message_size")
        if _uint(v):
            self.peer_max_message = v
        v = caps.get("max_streams")
        if _uint(v):
            self.peer_max_streams = v

    def open_stream(self, f: Frame) -> None:
        sid, text, alias = f.stream_id, f.text, f.alias
        snum = sid if alias is not None else None
        if len(self.streams) >= self.router.opts.max_streams:
            self.send_error(sid, "EWINDOW", "too many streams", text, alias, 1000, snum)
            return
        window = check_window(f.ext["window"]) if "window" in f.ext else {}
        st = Stream(
            sid=sid,
            alias=alias,
            text=text,
            syn_seq=f.msg_seq,
            recv_seq=f.msg_seq,
            recv_frag=0,
            in_message=True,
            msg_size=0,
            syn_ext=f.ext,
            qos=f.qos,
            ttl=f.ttl,
            window=window,
            next_send_seq=f.msg_seq + 1,
        )
        st.recv_credit = self.router.opts.initial_window
        if text and self.router.opts.text_credit_unlimited:
            st.recv_credit = U31
        st.send_w = self.peer_initial_window
        st.send_credit = st.send_w
        if text and not self.got_caps:
            st.unlimited_send = True  # ATP-FLOW-007
            st.send_credit = U31
        self.streams[sid] = st
        if st.ttl:
            st.ttl_handle = asyncio.get_running_loop().call_later(st.ttl, self.on_ttl, st)
        self.on_data(st, f)

    def on_ttl(self, st: Stream) -> None:
        if not st.ended and not self.closed:
            self.stream_error(st.sid, "ETIMEOUT", "the stream's ttl passed", st.text, st.alias)

    def on_window_update(self, st: Stream, f: Frame) -> None:
        if "credit" in f.ext:
            c = f.ext["credit"]
            if not st.unlimited_send:
                if st.send_credit + c > U31:
                    self.stream_error(
                        st.sid, "EWINDOW", "credit window past 2^31-1", st.text, st.alias
                    )
                    return
                st.send_credit += c
                st.credit_event.set()
        if "window" in f.ext:
            st.window.update(check_window(f.ext["window"]))
            if self.over_budget(st):
                self.stream_error(
                    st.sid, "EBUDGET", "the lowered budget window is exceeded", st.text, st.alias
                )

    def over_budget(self, st: Stream) -> bool:
        mt, mu = st.window.get("max_tokens"), st.window.get("max_usd_micros")
        return (mt is not None and st.used_tokens > mt) or (mu is not None and st.used_usd > mu)

    def on_data(self, st: Stream, f: Frame) -> None:
        if st.half_closed:
            self.stream_error(st.sid, "EPROTO", "DATA after the client's FIN", st.text, st.alias)
            return
        if f.cost > st.recv_credit:
            self.stream_error(
                st.sid, "EWINDOW", "DATA frame past the credit granted", st.text, st.alias
            )
            return
        if f.msg_seq != st.recv_seq or f.frag_seq != st.recv_frag:
            self.stream_error(
                st.sid,
                "ESEQ_RETRY",
                f"expected msg_seq {st.recv_seq} frag_seq {st.recv_frag},"
                f" got {f.msg_seq}/{f.frag_seq}",
                st.text,
                st.alias,
            )
            return
        st.recv_credit -= f.cost
        st.msg_size += len(f.payload)
        is_syn_msg = st.recv_seq == st.syn_seq
        if st.msg_size > self.router.opts.max_message_size:
            self.stream_error(st.sid, "ETOOBIG", "message over max_message_size", st.text, st.alias)
            return
        if f.flags & CONT and f.frag_seq == 0xFFFF:
            self.stream_error(
                st.sid, "ETOOBIG", "message of more than 65,536 fragments", st.text, st.alias
            )
            return
        if is_syn_msg:
            st.syn_payload += f.payload
        # consumed (buffered or ignored): credit returns (ATP-SEQ-009, ATP-STREAM-015)
        st.unreturned += f.cost
        if f.flags & CONT:
            st.recv_frag += 1
        else:
            st.recv_seq += 1
            st.recv_frag = 0
            st.msg_size = 0
            if f.flags & FIN:
                st.half_closed = True
            if is_syn_msg:
                payload = bytes(st.syn_payload)
                st.syn_payload = bytearray()
                try:
                    check_cbor_payload(payload)
                except CborError as e:
                    self.stream_error(st.sid, "EPROTO", f"SYN payload: {e}", st.text, st.alias)
                    return
                st.task = asyncio.get_running_loop().create_task(self.serve(st, payload))
        self.maybe_return_credit(st)

    def maybe_return_credit(self, st: Stream) -> None:
        if st.half_closed or st.ended:
            return
        if st.text and self.router.opts.text_credit_unlimited:
            return
        half = min(self.router.opts.initial_window, INITIAL_WINDOW) // 2  # ATP-SESS-016
        eager = self.router.opts.eager_credit
        if st.unreturned >= half or (st.unreturned and eager):
            n, st.unreturned = st.unreturned, 0
            st.recv_credit += n
            self.send_frame(
                Frame(type=WINDOW_UPDATE, stream_id=st.sid, ext={"credit": n}), st.text, st.alias
            )

    # --- the echo model --------------------------------------------------------------

    async def serve(self, st: Stream, payload: bytes) -> None:
        try:
            await self._serve(st, payload)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # ATP-ERR-010
            if not st.ended and not self.closed:
                self.stream_error(
                    st.sid, "EINTERNAL", f"router failure: {type(e).__name__}", st.text, st.alias
                )

    async def _serve(self, st: Stream, payload: bytes) -> None:
        task = cbor2.loads(payload) if payload else None
        prompt: Any = None
        if isinstance(task, dict):
            content = task.get("content")
            prompt = content.get("prompt") if isinstance(content, dict) else content
        if not isinstance(prompt, str):
            prompt = "" if prompt is None else repr(prompt)
        answer = prompt.encode("utf-8")
        partial = cbor2.dumps(
            {"type": "agent.result.partial", "content": {"chunk": 0, "text": prompt}}
        )
        final_body = cbor2.dumps(
            {"type": "agent.result.final", "content": {"ok": True, "answer": prompt}}
        )
        est_tokens = tokens_of(payload) + 2 * tokens_of(answer)
        w = st.window
        if w.get("max_parallel") == 0:
            self.stream_error(
                st.sid, "EWINDOW", "max_parallel 0 allows no model call", st.text, st.alias
            )
            return
        if ("max_tokens" in w and est_tokens > w["max_tokens"]) or (
            "max_usd_micros" in w and est_tokens * 10 > w["max_usd_micros"]
        ):
            self.stream_error(
                st.sid,
                "EBUDGET",
                "the task's estimate exceeds the budget window",
                st.text,
                st.alias,
            )
            return
        # ATP-FLOW-014: the smallest FINAL ext must fit the window at once
        min_final_ext = {"telemetry": {"tokens": 0, "usd_micros": 0, "latency_ms": 0}}
        if not st.unlimited_send and self.fixed_cost(st, min_final_ext) > st.send_w // 2:
            self.stream_error(
                st.sid,
                "ETOOBIG",
                "the credit window cannot carry the FINAL's ext",
                st.text,
                st.alias,
            )
            return
        msgs: list[tuple[int, bytes, dict[str, Any]]] = []
        room = U32 - st.syn_seq
        if room >= 2 and not self.router.opts.no_partial:
            msgs.append((MORE, partial, {}))
        elif room < 1:
            self.stream_error(st.sid, "EPROTO", "msg_seq sequence exhausted", st.text, st.alias)
            return
        msgs.append((FIN, final_body, {}))
        for flags, body, ext0 in msgs:
            ext = ext0
            if flags & FIN:
                st.used_tokens = min(U64, tokens_of(payload) + 2 * tokens_of(answer))
            else:
                st.used_tokens = min(U64, tokens_of(payload) + tokens_of(answer))
            st.used_usd = min(U64, st.used_tokens * 10)
            if self.over_budget(st):
                self.stream_error(
                    st.sid, "EBUDGET", "usage passed the budget window", st.text, st.alias
                )
                return
            if flags & FIN:
                ext = {
                    "telemetry": {
                        "tokens": st.used_tokens,
                        "usd_micros": st.used_usd,
                        "latency_ms": int((time.monotonic() - st.started) * 1000),
                        "adapters": ["indie-echo"],
                    }
                }
            if len(body) > self.peer_max_message:
                self.stream_error(
                    st.sid,
                    "ETOOBIG",
                    "answer larger than the client's max_message_size",
                    st.text,
                    st.alias,
                )
                return
            if self.router.opts.budget_updates:
                usage = {"tokens": st.used_tokens, "usd_micros": st.used_usd, "parallel": 1}
                self.send_frame(
                    Frame(type=BUDGET_UPDATE, stream_id=st.sid, ext={"usage": usage}),
                    st.text,
                    st.alias,
                )
            await self.send_message(st, flags, body, ext)
            if st.ended:
                return
        self.end_stream(st)

    def fixed_cost(self, st: Stream, ext: dict[str, Any]) -> int:
        """Cost of a message's first fragment with one payload byte (binary) / its ext (text)."""
        if st.text:
            f = Frame(
                type=DATA,
                flags=MORE | CONT,
                stream_id=st.sid,
                msg_seq=U32,
                frag_seq=0xFFFF,
                ext=dict(ext),
                payload=b"\x00",
            )
            if st.alias is not None:
                f.ext["stream_num"] = st.sid
            return len(encode_text(f, st.alias, self.session_id, False).encode("utf-8"))
        return HEADER_LEN + (len(cbor2.dumps(ext)) if ext else 0)

    async def send_message(self, st: Stream, flags: int, body: bytes, ext: dict[str, Any]) -> None:
        seq = st.next_send_seq
        st.next_send_seq += 1
        pos, frag = 0, 0
        while True:
            if st.ended or self.closed:
                return
            fext = dict(ext) if frag == 0 else {}
            if frag == 0 and st.alias is not None and not st.first_data_sent:
                fext["stream_num"] = st.sid
            fext_len = len(cbor2.dumps(fext)) if fext else 0
            max_pl = max(1, min(self.peer_max_frame - fext_len, max(1, st.send_w // 4)))
            if self.router.opts.fragment:
                max_pl = min(max_pl, self.router.opts.fragment)
            n = min(len(body) - pos, max_pl)
            f = self._frag(st, flags, seq, frag, fext, body, pos, n)
            cost = self._cost(st, f)
            while not st.unlimited_send and cost > st.send_credit:
                c = st.send_credit
                if c > st.send_w // 2 and n > 1:
                    # ATP-FLOW-013: cut the fragment to fit
                    lo, hi = 1, n - 1
                    while lo < hi:
                        mid = (lo + hi + 1) // 2
                        if (
                            self._cost(st, self._frag(st, flags, seq, frag, fext, body, pos, mid))
                            <= c
                        ):
                            lo = mid
                        else:
                            hi = mid - 1
                    n = lo
                    f = self._frag(st, flags, seq, frag, fext, body, pos, n)
                    cost = self._cost(st, f)
                    if cost <= c:
                        break
                st.credit_event.clear()
                await st.credit_event.wait()
                if st.ended or self.closed:
                    return
                n = min(len(body) - pos, max_pl)
                f = self._frag(st, flags, seq, frag, fext, body, pos, n)
                cost = self._cost(st, f)
            if not st.unlimited_send:
                st.send_credit -= cost
            self.send_frame(f, st.text, st.alias)
            st.first_data_sent = True
            self.flush()
            await self.drain(st)
            pos += n
            frag += 1
            if pos >= len(body):
                return

    def _frag(
        self,
        st: Stream,
        flags: int,
        seq: int,
        frag: int,
        ext: dict[str, Any],
        body: bytes,
        pos: int,
        n: int,
    ) -> Frame:
        last = pos + n >= len(body)
        fl = flags if last else (flags & ~FIN) | CONT
        if not last and not flags & FIN:
            fl |= MORE
        if not last and flags & FIN:
            fl = CONT
        return Frame(
            type=DATA,
            flags=fl,
            stream_id=st.sid,
            msg_seq=seq,
            frag_seq=frag,
            ext=ext,
            payload=body[pos : pos + n],
        )

    def _cost(self, st: Stream, f: Frame) -> int:
        if st.text:
            whole = f.frag_seq == 0 and not f.flags & CONT
            return len(encode_text(f, st.alias, self.session_id, whole).encode("utf-8"))
        return HEADER_LEN + (len(cbor2.dumps(f.ext)) if f.ext else 0) + len(f.payload)
