"""Hostile cases: the JSON mapping, time, budget, dead adapters, size limits, slow
readers, QUIC stream resets, vanishing peers."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from .hostile_session import Session, syn
from .hostile_verdicts import (
    BIG,
    EP,
    EXT_BAD,
    _json_end,
    _json_syn,
    case,
    conn,
    ok,
    opened,
    stream,
)
from .hostile_wire import (
    BUDGET_UPDATE,
    CAPABILITIES,
    CONT,
    DATA,
    ERROR,
    FIN,
    HB,
    RST,
    SYN,
    WINDOW_UPDATE,
    Closed,
    frame,
)


# -- JSON text mapping (WebSocket only) ------------------------------------------------
@case(kinds=("ws",), weight=2)
def c_json_stream(s: Session, r: random.Random) -> None:
    alias = f"st{r.randint(1, 9)}"
    options: list[tuple[dict[str, Any], str | None]] = [
        ({}, "fin"),
        ({"qos": "platinum"}, "EPROTO"),
        ({"msg_seq": 1.5}, "EPROTO"),
        ({"ttl": -1}, "EPROTO"),
        ({"ttl": 70000}, "EPROTO"),
        ({"window": {"max_tokens": "many"}}, "EPROTO"),
        ({"session_id": "x" * 129}, "EPROTO"),
        ({"payload_b64": "!!!"}, "EPROTO"),
        ({"payload_b64": "aGk=", "payload": 1}, "EPROTO"),
        ({"meta": {"task_type": "qa", "adapters": ["echo"], "fanout": 99}}, "EPROTO"),
        ({"x-extra": {"deep": [1, [2, [3]]]}}, "fin"),
        ({"flags": ["SYN", "NOPE"]}, "fin"),
        ({"type": 99}, None),  # unknown type: ignored, nothing comes back
    ]
    bad, want = r.choice(options)
    text = json.dumps(_json_syn(alias, **bad))
    s.link.send_text(text)
    got = _json_end(s, alias, 3.0 if want is None else 8.0)
    if got != want:
        s.violations.append(f"ATP-JSON-006/010: text SYN {bad} ended {got!r}, spec: {want!r}")
    s.link.send_text(json.dumps(_json_syn("probe")))
    if _json_end(s, "probe") != "fin":
        s.violations.append("ATP-ERR-001: text probe did not complete")


# -- time, budget, adapters, limits ------------------------------------------------------
@case()
def c_ttl_passes(s: Session, r: random.Random) -> None:
    sid = opened(s, "hold", ttl=1)
    stream(s, sid, {"ETIMEOUT"}, "ATP-TIME-001")


@case()
def c_budget_too_small(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    s.link.send([syn(sid, "b" * 400, ext={"window": {"max_tokens": r.randint(1, 3)}})])
    stream(s, sid, {"EBUDGET"}, "ATP-BUDGET-002")


@case()
def c_dead_adapter(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    s.track(sid)
    s.link.send([syn(sid, "x", "dead")])
    stream(s, sid, {"EAGENTDOWN"}, "ATP-ADAPT-011")
    err: dict[str, Any] = next(
        (f.ext.get("error", {}) for f in s.streams[sid].frames if f.type == ERROR), {}
    )
    if s.streams[sid].ended == "EAGENTDOWN" and not isinstance(err.get("retry_after_ms"), int):
        s.violations.append("ATP-ERR-004: EAGENTDOWN without retry_after_ms")


@case()
def c_error_for_unopened_stream(s: Session, r: random.Random) -> None:
    """ATP-ERR-011: a well-formed ERROR on a stream never opened is discarded, unanswered."""
    sid = s.new_sid(gap=r.randint(1, 9))
    s.link.send([frame(ERROR, RST, sid, ext={"error": {"code": "EPROTO", "message": "m"}})])
    s.pump(0.4)
    if s.violations or s.closed is not None:
        s.violations.append("ATP-ERR-011: the router answered an ERROR on a stream never opened")
    if s.probe() != "fin":
        s.violations.append("ATP-ERR-011: probe after an ERROR on an unopened stream")


@case(kinds=("ws",), weight=0.3)
def c_ws_message_over_limit(s: Session, r: random.Random) -> None:
    """ATP-WS-012: a binary message over max_frame_size + 65,536 whose first frame is
    small: connection error ETOOBIG, close 1009."""
    small = frame(0x99, 0, 0, raw_payload=b"u" * 200)
    n = (1_048_576 + 65_536) // len(small) + 2
    s.link.send([small] * n)
    conn(s, BIG, "ATP-WS-012")
    if s.closed is not None and s.closed.code not in (None, 1009, 1006):
        s.violations.append(f"ATP-WS-012: close code {s.closed.code}, spec 1009")


@case(kinds=("ws",), weight=0.3)
def c_ws_text_over_limit(s: Session, r: random.Random) -> None:
    s.link.send_text(json.dumps({"stream_id": 0, "type": 99, "x": "t" * 1_048_600}))
    conn(s, BIG, "ATP-WS-012 (text)")


@case(weight=0.3)
def c_message_over_max_message_size(s: Session, r: random.Random) -> None:
    """ATP-SEQ-007/009: a SYN in fragments past 4 MiB, sent within the credit the router
    returns for buffered fragments; ETOOBIG."""
    sid = s.new_sid()
    s.track(sid)
    s.send_credit[sid] = 262_144
    piece = b"m" * 60_000
    meta = {"meta": {"task_type": "qa", "adapters": ["echo"]}}
    head = frame(DATA, SYN | CONT, sid, 1, qos=1, ext=meta, raw_payload=b"\x78\x00")
    s.link.send([head])
    s.send_credit[sid] -= len(head)
    total, i = 0, 1
    while total <= 4_194_304 + 60_000 and s.streams[sid].ended is None and s.closed is None:
        f = frame(DATA, CONT, sid, 1, frag=i, raw_payload=piece)
        if not s.wait(lambda f=f: s.send_credit[sid] >= len(f) or s.streams[sid].ended, 5):
            s.violations.append(f"ATP-SEQ-009: no credit returned after {total} bytes of fragments")
            return
        if s.streams[sid].ended is not None:
            break
        s.link.send([f])
        s.send_credit[sid] -= len(f)
        total += len(piece)
        i += 1
    stream(s, sid, BIG, "ATP-SEQ-007")


@case(weight=0.2)
def c_too_many_fragments(s: Session, r: random.Random) -> None:
    """ATP-SEQ-013: a message of 65,536 fragments (the last, frag_seq 65,535, still with
    CONT) is a stream error ETOOBIG, and not before it: 65,535 fragments are a message a
    receiver must take. One-byte fragments, sent in batches within the credit the router
    returns for buffered fragments (ATP-SEQ-009)."""
    sid = s.new_sid()
    s.track(sid)
    s.wait(lambda: s.caps_answers >= 1, 2.0)
    s.send_credit[sid] = int(s.router_caps.get("initial_window", 262_144))  # ATP-FLOW-003
    meta = {"meta": {"task_type": "qa", "adapters": ["echo"]}}
    head = frame(DATA, SYN | CONT, sid, 1, qos=1, ext=meta, raw_payload=b"\x78")
    s.link.send([head])
    s.send_credit[sid] -= len(head)
    last = 65_535
    i = 1
    while i <= last and s.streams[sid].ended is None and s.closed is None:
        batch = [
            frame(DATA, CONT, sid, 1, frag=k, raw_payload=b"f")
            for k in range(i, min(i + 2000, last + 1))
        ]
        need = sum(map(len, batch))
        if not s.wait(lambda n=need: s.send_credit[sid] >= n or s.streams[sid].ended, 8):
            s.violations.append(f"ATP-SEQ-009: no credit returned after {i} fragments")
            return
        if s.streams[sid].ended is not None:
            break
        s.link.send([b"".join(batch)])  # one write (one WebSocket message)
        s.send_credit[sid] -= need
        i += len(batch)
    if i <= last:
        s.violations.append(
            f"ATP-SEQ-013: stream ended {s.streams[sid].ended!r} after {i} of 65,536 fragments"
        )
        return
    stream(s, sid, BIG, "ATP-SEQ-013")


@case(weight=0.2)
def c_idle_session_closed(s: Session, r: random.Random) -> None:
    """ATP-TIME-004: a session with no open stream that sends nothing is closed after the
    router's idle_timeout_ms (announced in its CAPABILITIES; the fleet's router uses
    IDLE_MS) with a connection error ETIMEOUT — over QUIC CONNECTION_CLOSE 0x104
    (ATP-QUIC-004), not QUIC's own silent idle timeout. A stream served first, and
    a heartbeat, restart the timer (ATP-TIME-008). Nothing to judge against a router
    whose idle timeout is over 15 s."""
    idle = s.router_caps.get("idle_timeout_ms")
    if not isinstance(idle, int) or not 0 < idle <= 15_000:
        return
    if r.random() < 0.5 and s.probe() != "fin":
        s.violations.append("probe before the idle wait did not complete")
        return
    if r.random() < 0.5:
        s.link.send([frame(DATA, HB, 0, raw_payload=b"idle")])
    t0 = time.monotonic()
    s.wait_closed(idle / 1000 + 4)
    took = time.monotonic() - t0
    if s.closed is not None and took < idle / 1000 * 0.9:
        s.violations.append(f"ATP-TIME-004: closed after {took:.1f} s, idle_timeout_ms {idle}")
    conn(s, {"ETIMEOUT"}, "ATP-TIME-004")


@case(weight=1.5)
def c_slow_reader(s: Session, r: random.Random) -> None:
    """A client with a small window (down to 1 byte) and max_frame_size, which reads slowly
    and grants credit in dribbles: the router never sends past its credit (ATP-FLOW-001)
    nor a frame over the client's max_frame_size (ATP-SESS-007), and the stream completes
    (ATP-FLOW-013: no deadlock) or, when the FINAL's fixed cost (24 + its telemetry ext)
    cannot fit half the window, is refused with ETOOBIG (ATP-FLOW-014; taken for windows
    up to 256 bytes, where half is 128)."""
    w = r.choice([1, 16, 64, 200, 600, 1024, 2048, 4096, 16384])
    mfs = r.choice([1024, 4096, 1_048_576])
    caps = {"versions": [1], "initial_window": w, "max_frame_size": mfs}
    s.link.send([frame(CAPABILITIES, 0, 0, ext={"caps": caps})])
    s.wait(lambda: s.caps_answers >= 1, 2.0)
    s.peer_max_frame = mfs
    sid = s.new_sid()
    s.track(sid)
    s.recv_credit[sid] = w
    # ttl 60: a slow reader may take longer than the usual 8 s (ATP-TIME-001 would end it)
    s.link.send([syn(sid, "0123456789" * 10, "big" if w >= 4096 else "echo", ttl=60)])
    used = 0
    deadline = time.monotonic() + 25
    while s.streams[sid].ended is None and s.closed is None:
        if time.monotonic() > deadline:
            s.violations.append(f"ATP-FLOW-013: slow-reader stream stuck (window {w})")
            return
        before = s.recv_credit[sid]
        s.pump(r.choice([0.02, 0.1, 0.3]))
        used += before - s.recv_credit[sid]
        if used >= (w + 1) // 2 or (used and r.random() < 0.3):
            grant = used if r.random() < 0.7 else max(1, used // 2)
            s.link.send([frame(WINDOW_UPDATE, 0, sid, ext={"credit": grant})])
            s.recv_credit[sid] += grant
            used -= grant
    end = s.streams[sid].ended
    if end != "fin" and not (end == "ETOOBIG" and w <= 256):
        s.violations.append(f"ATP-FLOW-013/014: slow reader (window {w}) ended {end!r}")


@case(kinds=("ws",))
def c_json_alias_reuse(s: Session, r: random.Random) -> None:
    """ATP-JSON-003: a SYN on an alias whose stream closed opens a new stream."""
    for _ in range(r.randint(2, 4)):
        s.link.send_text(json.dumps(_json_syn("st1")))
        end = _json_end(s, "st1")
        if end != "fin":
            s.violations.append(f"ATP-JSON-003: alias reuse ended {end!r}")
            return


@case()
def c_syn_on_closed_stream_id(s: Session, r: random.Random) -> None:
    """A SYN on the id of a stream that completed: a stream error EPROTO, its id being used
    (ATP-FLAG-004, ATP-STREAM-002). Over QUIC it goes either on the ended stream's QUIC
    stream, whose client side is still open (read and discarded: ATP-QUIC-013), or as the
    first frame of a new QUIC stream (a connection error EPROTO: ATP-QUIC-023)."""
    sid = s.new_sid()
    s.track(sid)
    s.link.send([syn(sid)])
    if s.ended(sid) != "fin":
        s.violations.append("setup: stream did not complete")
        return
    s.streams[sid] = type(s.streams[sid])(1)
    if s.link.quic is not None and r.random() < 0.5:
        s.streams[sid].ended = "conn"
        s.link.send([syn(sid)], qsid=s.link.quic.open())
        conn(s, EP, "ATP-QUIC-023 (a SYN on an ended id on a new QUIC stream)")
        return
    s.link.send([syn(sid)])
    s.pump(0.5)
    got = s.streams[sid].ended
    want = None if s.link.quic is not None else "EPROTO"
    if got != want:
        rule = "ATP-QUIC-013" if s.link.quic is not None else "ATP-STREAM-002/FLAG-004"
        s.violations.append(f"{rule}: SYN on a closed id ended {got!r}, spec: {want!r}")
    s.streams[sid].ended = got or "discarded"
    if s.probe() != "fin":
        s.violations.append("probe after a SYN on a closed id did not complete")


@case(weight=1.5)
def c_coalesced_error_then_valid(s: Session, r: random.Random) -> None:
    """One message: a stream error, then valid SYNs: the later streams still run
    (ATP-ERR-005: an error on one stream must not end another)."""
    bad = s.new_sid()
    s.track(bad)
    good = [s.new_sid() for _ in range(r.randint(1, 3))]
    for g in good:
        s.track(g)
    spoil = r.choice(
        [
            syn(bad, qos=9),
            syn(bad, raw_ext=r.choice(EXT_BAD)),
            syn(bad, raw_payload=b"\xff"),
            syn(bad, ext={"session_id": 1}),
        ]
    )
    s.link.send([spoil, *[syn(g) for g in good]])
    for g in good:
        ok(s, g, "ATP-ERR-005 (coalesced)")
    if s.ended(bad) != "EPROTO":
        s.violations.append(
            f"ATP-FRAME-006/007/024: coalesced bad SYN ended {s.streams[bad].ended!r}"
        )


@case()
def c_frames_after_final(s: Session, r: random.Random) -> None:
    """ATP-FLAG-004 / ATP-FRAME-023: anything for a stream that completed is discarded,
    malformed control frames included; no ERROR comes back for it."""
    sid = s.new_sid()
    s.track(sid)
    s.link.send([syn(sid)])
    if s.ended(sid) != "fin":
        s.violations.append("setup: stream did not complete")
        return
    late = r.sample(
        [
            frame(DATA, 0, sid, 2, raw_payload=b"late"),
            frame(DATA, 0, sid, 99, raw_payload=b"late seq"),
            frame(WINDOW_UPDATE, 0, sid, ext={"credit": 5}),
            frame(WINDOW_UPDATE, 0, sid, ext={"credit": 0}),
            frame(BUDGET_UPDATE, 0, sid, ext={"usage": {}}),
            frame(CAPABILITIES, 0, sid, ext={"caps": {"versions": [1]}}),
            frame(DATA, RST, sid, 3),
            frame(ERROR, RST, sid, ext={"error": {"code": "EPROTO"}}),
        ],
        r.randint(1, 4),
    )
    s.link.send(late)
    s.pump(0.4)
    if s.probe() != "fin":
        s.violations.append("ATP-FLAG-004: probe after frames for a closed stream")


@case(kinds=("ws",))
def c_json_alias_and_numeric_ids(s: Session, r: random.Random) -> None:
    """ATP-JSON-014/016: an alias gets an id above every numeric id; a numeric SYN then
    needs an id above the alias's ``stream_num``."""
    first = s.new_sid(gap=r.randint(1, 20))
    s.track(first)
    s.link.send([syn(first)])
    if s.ended(first) != "fin":
        s.violations.append("setup: numeric stream did not complete")
        return
    s.link.send_text(json.dumps(_json_syn("al")))
    num: list[int] = []
    import time as _t

    deadline = _t.monotonic() + 8
    end = None
    while end is None and _t.monotonic() < deadline and s.closed is None:
        try:
            for f in s.link.recv(0.5):
                if f.text and "stream_num" in f.ext:
                    num.append(int(f.ext["stream_num"]))
                if f.text and (f.flags & FIN or f.type == ERROR):
                    end = "fin" if f.flags & FIN else f.code()
        except TimeoutError:
            continue
    if end != "fin" or not num:
        s.violations.append(f"ATP-JSON-016: alias stream ended {end!r}, stream_num {num}")
        return
    if num[0] <= first:
        s.violations.append(f"ATP-JSON-014: alias id {num[0]} not above numeric id {first}")
    s.max_sid = max(s.max_sid, num[0])
    nxt = s.new_sid()
    s.track(nxt)
    s.link.send([syn(nxt)])
    ok(s, nxt, "ATP-JSON-016 (a numeric SYN above stream_num)")


@case(kinds=("quic",))
def c_quic_reset_stream(s: Session, r: random.Random) -> None:
    """ATP-QUIC-006: RESET_STREAM (or STOP_SENDING) on a live ATP stream's QUIC stream is
    an RST from the peer; ATP-QUIC-021: a QUIC stream reset before its first frame gives
    up its place. The session goes on."""
    assert s.link.quic is not None
    q = s.link.quic
    how = r.choice(["reset_live", "stop_live", "reset_empty", "fin_early"])
    if how == "reset_empty":
        empty = q.open()
        q.reset(empty, 0x10C)
    else:
        # fin_early on the adapter that answers in 16 s: the stream is surely still running
        sid = opened(s, "hold" if how == "fin_early" else "slow")
        s.wait(lambda: bool(s.streams[sid].frames), 3.0)
        qsid = s.link.qsid(sid)
        if how == "reset_live":
            q.reset(qsid, 0xFF)
        elif how == "stop_live":
            q.quic.stop_stream(qsid, 0xFF)
            q._flush()
        else:  # the client's QUIC FIN before the ATP stream ended (a broken client,
            # ATP-QUIC-012): a stream error EPROTO (ATP-QUIC-024)
            q.send(qsid, b"", end=True)
            got = s.ended(sid)
            if got != "EPROTO":
                s.violations.append(f"ATP-QUIC-024: stream after an early QUIC FIN ended {got!r}")
        s.pump(0.5)
        v = s.streams[sid]
        v.ended = v.ended or "reset"
    if s.probe() != "fin":
        s.violations.append(f"ATP-QUIC-006/021: probe after {how} did not complete")


@case(kinds=("ws",), weight=0.5)
def c_vanish_mid_stream(s: Session, r: random.Random) -> None:
    """The peer disappears with streams open (no close frame / CONNECTION_CLOSE): the
    router must end them and cancel their calls (ATP-SESS-012; the run's end checks that
    no stream or session stays open)."""
    for _ in range(r.randint(1, 5)):
        opened(s, r.choice(["slow", "hold"]))
    s.pump(0.1)
    if s.link.ws is not None:
        s.link.ws.sock.close()
    s.closed = Closed(None, "vanished")


_JSON_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**32,
    2**53 + 1,
    2**64,
    -(2**64) - 1,
    1.5,
    -0.0,
    1e300,
    "",
    "x",
    "gold",
    "SYN",
    "\u00e9\u4e2d",
    [],
    [1],
    ["SYN"],
    ["SYN", 5],
    {},
    {"a": 1},
    {"max_tokens": 1},
    "A" * 200,
]


@case(kinds=("ws",), weight=3)
def c_json_field_mutation(s: Session, r: random.Random) -> None:
    """A valid text SYN with one field (header or ext, top level or inside ``window`` /
    ``meta``) set to a random JSON value. The alias names the stream, so whatever is
    wrong is a stream error (ATP-JSON-006): the session must stay open, the stream end
    with its FINAL or an ERROR of the registry, and a later text stream complete."""
    alias = "m" + str(r.randint(1, 99))
    obj = _json_syn(alias)
    where = r.choice(
        [
            "msg_seq",
            "frag_seq",
            "qos",
            "ttl",
            "payload",
            "window",
            "meta",
            "session_id",
            "x-vendor",
            "window.max_tokens",
            "window.max_parallel",
            "meta.adapters",
            "meta.task_type",
            "meta.fanout",
            "meta.strategy",
            "payload.content",
            "payload_b64",
        ]
    )
    value = r.choice(_JSON_VALUES)
    if "." in where:
        a, b = where.split(".")
        obj.setdefault(a, {})
        if isinstance(obj[a], dict):
            obj[a][b] = value
    elif where == "payload_b64":
        obj.pop("payload")
        obj["payload_b64"] = value
    else:
        obj[where] = value
    s.link.send_text(json.dumps(obj))
    end = _json_end(s, alias)
    if s.closed is not None or s.session_errors:
        s.violations.append(
            f"ATP-JSON-006: {where}={value!r} on a named stream closed the session "
            f"({s.session_errors or s.closed})"
        )
        return
    if end is None:
        s.violations.append(f"ATP-STREAM-011: text stream with {where}={value!r} never ended")
    s.link.send_text(json.dumps(_json_syn("after")))
    if _json_end(s, "after") != "fin":
        s.violations.append(f"ATP-ERR-001: text probe after {where}={value!r} did not complete")


@case(kinds=("ws",))
def c_json_control_frames(s: Session, r: random.Random) -> None:
    """Text control frames: a heartbeat (answered, ATP-TIME-002), a WINDOW_UPDATE and a
    bare RST for an alias that names no stream (ATP-JSON-013: as a stream never opened,
    EPROTO), CAPABILITIES as text (answered at most once)."""
    which = r.choice(["hb", "wu_unknown", "rst_unknown", "caps"])
    if which == "hb":
        s.link.send_text(json.dumps({"flags": ["HB"], "payload_b64": "aGVsbG8="}))
        s.wait(lambda: False, 0.6)
        if s.closed is not None:
            s.violations.append("ATP-TIME-002: a text heartbeat closed the session")
    elif which == "caps":
        s.link.send_text(json.dumps({"type": "CAPABILITIES", "caps": {"versions": [1]}}))
        s.pump(0.5)
    else:
        f: dict[str, Any] = {"stream_id": "ghost"}
        if which == "wu_unknown":
            f.update(type="WINDOW_UPDATE", credit=100)
        else:
            f.update(flags=["RST"], msg_seq=2)
        s.link.send_text(json.dumps(f))
        end = _json_end(s, "ghost", 3.0)
        if end != "EPROTO":
            s.violations.append(f"ATP-JSON-013: {which} on an unknown alias ended {end!r}")
    if s.closed is None and s.probe() != "fin":
        s.violations.append(f"probe after text {which} did not complete")


@case()
def c_window_lowered_mid_flight(s: Session, r: random.Random) -> None:
    """ATP-BUDGET-005: a WINDOW_UPDATE ``window`` lowering max_tokens below what the stream
    has used ends it with EBUDGET; raising it lets it finish."""
    sid = opened(s, "slow")
    s.wait(lambda: len(s.streams[sid].frames) >= 2, 3.0)
    if s.streams[sid].ended is not None:
        return
    lower = r.random() < 0.5
    w = {"max_tokens": 1} if lower else {"max_tokens": 10**9, "max_parallel": 8}
    s.link.send([frame(WINDOW_UPDATE, 0, sid, ext={"window": w})])
    if lower:
        stream(s, sid, {"EBUDGET"}, "ATP-BUDGET-005")
    else:
        ok(s, sid, "ATP-BUDGET-005 (raised)", probe=True)


@case(kinds=("ws",), weight=0.5)
def c_handshake_junk(s: Session, r: random.Random) -> None:
    """Junk before or instead of a WebSocket handshake (a bad path, a bad version, no
    key, garbage, headers that never end): answered with an HTTP error or closed, and
    the router goes on serving (ATP-ERR-005, ATP-WS-014)."""
    import socket as _socket

    assert s.link.ws is not None
    host, port = s.link.ws.host, s.link.ws.port
    req = r.choice(
        [
            b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n\r\n",
            bytes(r.getrandbits(8) for _ in range(300)),
            b"GET /ws HTTP/1.1\r\n" + b"X-Junk: " + b"j" * 70_000 + b"\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n",  # never ends
        ]
    )
    with _socket.create_connection((host, port), timeout=5) as raw:
        try:
            raw.sendall(req)
            raw.settimeout(1.5)
            answer = raw.recv(200)
        except OSError:
            answer = b""
    if answer.startswith(b"HTTP/1.1 101"):
        s.violations.append(f"handshake junk was upgraded: {req[:60]!r}")
    if s.probe() != "fin":
        s.violations.append("ATP-ERR-005: the session beside a junk handshake did not complete")


@case()
def c_failing_adapter(s: Session, r: random.Random) -> None:
    """An adapter process that dies mid-stream (no other adapter to take over: EAGENTDOWN
    with retry_after_ms, ATP-ADAPT-004, ATP-ERR-004) or hangs (the stream's ttl ends it
    with ETIMEOUT, ATP-ADAPT-012, ATP-TIME-001); never a hanging stream, and the session
    goes on."""
    which = r.choice(["flaky", "stall"])
    sid = s.new_sid()
    s.track(sid)
    s.link.send([syn(sid, "hold me open " * 6, which, ttl=1 if which == "stall" else 8)])
    want = {"EAGENTDOWN"} if which == "flaky" else {"ETIMEOUT"}
    stream(s, sid, want, "ATP-ADAPT-004" if which == "flaky" else "ATP-ADAPT-012")
    err = next((f.ext.get("error") for f in s.streams[sid].frames if f.type == ERROR), None)
    if (
        which == "flaky"
        and isinstance(err, dict)
        and not isinstance(err.get("retry_after_ms"), int)
    ):
        s.violations.append("ATP-ERR-004: EAGENTDOWN without retry_after_ms")


@case(kinds=("quic",), weight=0.5)
def c_quic_control_stream_end(s: Session, r: random.Random) -> None:
    """The client ends (FIN) or resets the control stream, or STOP_SENDINGs it, with a
    stream open: a connection error EPROTO, close 0x100 (ATP-QUIC-025). The ERROR on
    stream 0 may be lost to the RESET_STREAM answering a STOP_SENDING: the close code
    tells (ATP-QUIC-014)."""
    assert s.link.quic is not None
    q = s.link.quic
    sid = opened(s)
    s.streams[sid].ended = "conn"
    how = r.choice(["fin", "reset", "stop"])
    if how == "fin":
        q.send(0, b"", end=True)
    elif how == "reset":
        q.reset(0, 0x100)
    else:
        q.quic.stop_stream(0, 0x100)
        q._flush()
    conn(s, EP, f"ATP-QUIC-025 (control stream {how})")


@case(kinds=("quic",), weight=0.5)
def c_quic_first_frame_not_above(s: Session, r: random.Random) -> None:
    """A new QUIC stream whose first frame names an ATP id not above the one of an
    earlier QUIC stream (the ended stream's, or one below it never used; a SYN, a
    WINDOW_UPDATE or a bare RST): a connection error EPROTO (ATP-QUIC-023)."""
    assert s.link.quic is not None
    sid = s.new_sid(gap=2)
    s.track(sid)
    s.link.send([syn(sid)])
    if s.ended(sid) != "fin":
        s.violations.append("setup: stream did not complete")
        return
    target = r.choice([sid, sid - 1])
    first = r.choice(
        [
            syn(target),
            frame(WINDOW_UPDATE, 0, target, ext={"credit": 100}),
            frame(DATA, RST, target, 2),
        ]
    )
    s.link.send([first], qsid=s.link.quic.open())
    conn(s, EP, "ATP-QUIC-023")


@case()
def c_bare_rst_never_opened(s: Session, r: random.Random) -> None:
    """A bare RST on an id never opened: a stream error EPROTO (ATP-FLAG-009, ATP-STREAM-003),
    over WebSocket and QUIC alike (over QUIC on the QUIC stream that carried it); the
    session goes on."""
    sid = s.new_sid(gap=r.randint(1, 9))
    s.link.send([frame(DATA, RST, sid, r.randint(0, 5))])
    stream(s, sid, EP, "ATP-FLAG-009")


@case(kinds=("ws",))
def c_json_connection_level(s: Session, r: random.Random) -> None:
    """Text frames whose stream cannot be identified, or that break a session rule:
    connection errors (ATP-JSON-006/017, ATP-FRAME-003, ATP-TIME-003, ATP-FRAME-011)."""
    text, want, rule = r.choice(
        [
            (json.dumps(_json_syn("a" * 129)), EP, "§12 alias length / ATP-JSON-017"),
            (json.dumps(_json_syn(-1)), EP, "ATP-JSON-006 (stream_id out of range)"),
            (json.dumps(_json_syn(2**31)), EP, "ATP-JSON-006 (stream_id out of range)"),
            (json.dumps(_json_syn(1.0)), EP, "ATP-JSON-010"),
            (json.dumps(_json_syn("x", v=2)), EP, "ATP-FRAME-003"),
            (json.dumps({"flags": ["HB"], "payload_b64": "QUFB" * 30}), BIG, "ATP-TIME-003"),
            (json.dumps({"flags": ["MORE"], "payload": 1}), EP, "ATP-FRAME-011"),
            (json.dumps({"type": "WINDOW_UPDATE", "credit": 5}), EP, "ATP-FRAME-012"),
            ('{"stream_id":"a","stream_id":"b","flags":["SYN"]}', EP, "ATP-JSON-017"),
        ]
    )
    s.link.send_text(text)
    conn(s, want, rule)
