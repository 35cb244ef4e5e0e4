"""Hostile cases: input the router must ignore or accept (unknown types, flags, keys,
fragments, splits, resets at every state, heartbeats, storms, mutations)."""

from __future__ import annotations

import random
import struct

import cbor2

from .hostile_session import Session, syn
from .hostile_verdicts import (
    case,
    ok,
    opened,
)
from .hostile_wire import (
    ACK,
    CAPABILITIES,
    CONT,
    DATA,
    ERROR,
    FIN,
    HB,
    HEADER,
    MORE,
    RST,
    SYN,
    WINDOW_UPDATE,
    frame,
)


# -- input the router must ignore or accept ------------------------------------------------
@case(weight=2)
def c_unknown_frame_type(s: Session, r: random.Random) -> None:
    t = r.randint(5, 255)
    body = bytes(r.getrandbits(8) for _ in range(r.randint(0, 40)))
    sid = s.new_sid()
    s.track(sid)
    junk = frame(
        t,
        r.getrandbits(8),
        # over QUIC not sid + 7: its own QUIC stream, opened before the SYN's, would name a
        # higher ATP id than the SYN's (ATP-QUIC-023: a connection error, whatever the type)
        r.choice([0, sid] if s.link.kind == "quic" else [0, sid, sid + 7]),
        r.getrandbits(32),
        qos=r.getrandbits(8),
        frag=r.getrandbits(16),
        raw_ext=body[:20],
        raw_payload=body[20:],
    )
    s.link.send([junk, syn(sid)] if r.random() < 0.5 or s.link.kind == "quic" else [syn(sid), junk])
    ok(s, sid, "ATP-FRAME-010")


@case()
def c_ignored_flags_and_keys(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    s.track(sid)
    extra = r.choice([0x80, HB, ACK, MORE, 0x80 | HB | ACK | MORE])
    s.link.send(
        [
            syn(
                sid,
                flags=SYN | extra,
                ext={"x-vendor-k": {"a": [1, b"b"]}, "unknown": None},
                meta={"x-y": 1, "shape": [1, 2]},
            )
        ]
    )
    ok(s, sid, "ATP-FLAG-001/002/005/006, ATP-EXT-001/004")


@case()
def c_caps_repeats_and_bad_limits(s: Session, r: random.Random) -> None:
    caps = {
        "versions": [1, 2],
        "max_frame_size": r.choice([10, -1, "x", 2**40]),
        "initial_window": r.choice([0, 2**31, "x", -3]),
        "features": ["json", "zz"],
    }
    s.link.send([frame(CAPABILITIES, 0, 0, ext={"caps": caps})] * r.randint(1, 4))
    s.wait(lambda: s.caps_answers >= 1, 3.0)
    sid = s.new_sid()
    s.track(sid)
    s.link.send([syn(sid)])
    ok(s, sid, "ATP-SESS-008/010")


@case()
def c_heartbeats(s: Session, r: random.Random) -> None:
    pays = [
        bytes(r.getrandbits(8) for _ in range(r.randint(0, 64))) for _ in range(r.randint(1, 6))
    ]
    s.link.send(
        [frame(DATA, HB | ACK, 0, raw_payload=b"reply")]
        + [frame(DATA, HB, 0, raw_payload=p) for p in pays]
    )
    s.wait(lambda: len(s.hb_acks) >= len(pays), 4.0)
    if s.hb_acks != pays:
        s.violations.append(
            f"ATP-TIME-002/006: HB replies {len(s.hb_acks)} for {len(pays)} (or not echoed)"
        )
    if s.probe() != "fin":
        s.violations.append("ATP-TIME-002: probe after heartbeats did not complete")


@case(weight=2)
def c_fragmented_interleaved(s: Session, r: random.Random) -> None:
    """Several SYNs, each cut in fragments at random bytes, interleaved (§7.3)."""
    n = r.randint(2, 6)
    sids = [s.new_sid() for _ in range(n)]
    queues: list[list[bytes]] = []
    for sid in sids:
        s.track(sid)
        pay = cbor2.dumps({"type": "agent.task", "content": {"prompt": "f" * r.randint(1, 300)}})
        cuts = sorted(r.sample(range(1, len(pay)), min(len(pay) - 1, r.randint(1, 5))))
        parts = [pay[a:b] for a, b in zip([0, *cuts], [*cuts, len(pay)], strict=True)]
        q = []
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            fl = (SYN if i == 0 else 0) | (0 if last else CONT)
            ext = {
                "window": {"max_tokens": 100000},
                "meta": {"task_type": "qa", "adapters": ["echo"]},
            }
            q.append(
                frame(DATA, fl, sid, 1, qos=2, frag=i, ext=ext if i == 0 else None, raw_payload=p)
            )
        queues.append(q)
    out: list[bytes] = []
    # SYN fragment 0 in id order (ATP-STREAM-002 and ATP-QUIC-021), the rest shuffled
    out += [q.pop(0) for q in queues]
    rest = [(i, q) for i, q in enumerate(queues)]
    while any(q for _, q in rest):
        i, q = r.choice([(i, q) for i, q in rest if q])
        out.append(q.pop(0))
    if s.link.kind == "ws" and r.random() < 0.5:
        for f in out:
            s.link.send([f], split=r.randint(1, len(f)))
    else:
        s.link.send(out, split=r.randint(1, 30))
    for sid in sids:
        ok(s, sid, "ATP-SEQ-012/ATP-FRAME-009")


@case(weight=2)
def c_split_at_every_byte(s: Session, r: random.Random) -> None:
    """One SYN written in pieces: WS continuation frames at a byte, or QUIC writes."""
    sid = s.new_sid()
    s.track(sid)
    f = syn(sid, "split")
    s.link.send([f], split=r.randint(1, len(f) - 1))
    ok(s, sid, "ATP-FRAME-009")


@case(weight=2)
def c_reset_at_every_state(s: Session, r: random.Random) -> None:
    """RST (or a well-formed ERROR) right after the SYN, mid-stream, after the FINAL, on
    a stream never opened; the session goes on (ATP-FLAG-003/004, ATP-ERR-011)."""
    when = r.choice(["with_syn", "mid", "after_fin", "twice"])
    sid = s.new_sid()
    s.track(sid)
    adapter = "echo" if when == "after_fin" else "slow"
    end = (
        frame(DATA, RST, sid, 2)
        if r.random() < 0.6
        else frame(
            ERROR, RST, sid, ext={"error": {"code": r.choice(["EPROTO", "EX_Z"]), "message": "c"}}
        )
    )
    if when == "with_syn":
        s.link.send([syn(sid, "r", adapter), end])
    else:
        s.link.send([syn(sid, "r", adapter)])
        if when == "after_fin":
            s.ended(sid)
        else:
            s.wait(lambda: bool(s.streams[sid].frames), 3.0)
        s.link.send([end] * (2 if when == "twice" else 1))
    s.pump(0.3)
    v = s.streams[sid]
    if v.ended not in (None, "fin"):
        s.violations.append(
            f"ATP-ERR-011/FLAG-004: router answered the client's reset with {v.ended}"
        )
    v.ended = v.ended or "rst"
    if s.probe() != "fin":
        s.violations.append(f"ATP-FLAG-003: probe after RST ({when}) did not complete")


@case()
def c_window_update_storm(s: Session, r: random.Random) -> None:
    sid = opened(s)
    n = r.randint(50, 400)
    s.link.send(
        [frame(WINDOW_UPDATE, 0, sid, ext={"credit": r.randint(1, 1000)}) for _ in range(n)]
    )
    ok(s, sid, "ATP-FLOW-004 (storm)", probe=True)


@case()
def c_half_closed_syn(s: Session, r: random.Random) -> None:
    sid = opened(s, "echo", flags=SYN | FIN)
    ok(s, sid, "ATP-FLAG-007/ATP-STREAM-014")


@case()
def c_client_input_messages(s: Session, r: random.Random) -> None:
    sid = opened(s)
    n = r.randint(1, 5)
    fs = [
        frame(DATA, FIN if i == n - 1 else 0, sid, 2 + i, raw_payload=b"i" * r.randint(0, 50))
        for i in range(n)
    ]
    s.link.send(fs)
    ok(s, sid, "ATP-STREAM-015")


@case(weight=2)
def c_random_header_mutation(s: Session, r: random.Random) -> None:
    """A valid SYN with one header byte set at random: whatever the router answers must
    keep the registry, the close-code table and the session (the general oracles)."""
    sid = s.new_sid()
    s.track(sid)
    f = bytearray(syn(sid, "mut"))
    pos = r.choice([1, 2, 3, 7, 11, 13, 15, 19, 23, r.randint(0, 23)])
    if pos in (16, 17, 18, 19, 20, 21, 22, 23):  # a length: keep the frame whole
        pos = r.choice([1, 2, 3, 11, 13, 15])
    f[pos] = r.getrandbits(8)
    new_sid = HEADER.unpack_from(f)[4] & 0x7FFFFFFF
    if new_sid:  # the mutation may open (or refuse) another stream, or change msg_seq
        s.track(new_sid, syn_seq=HEADER.unpack_from(f)[5])
    s.link.send([bytes(f)])
    target = new_sid if new_sid in s.streams else sid
    s.wait(lambda: s.streams[target].ended is not None or s.closed is not None, 6.0)
    if s.closed is None:
        end = s.probe()
        if end != "fin" and s.closed is None:
            s.violations.append(
                f"ATP-ERR-005: probe after a header mutation at byte {pos} ended {end!r}"
            )
    elif not s.session_errors and s.link.kind == "ws":
        s.violations.append("ATP-ERR-002: closed without an ERROR on stream 0")


@case()
def c_random_ext_mutation(s: Session, r: random.Random) -> None:
    """A valid SYN whose ext bytes have one byte flipped (length kept)."""
    sid = s.new_sid()
    s.track(sid)
    f = bytearray(syn(sid, "mutx"))
    ext_len = struct.unpack_from("!I", f, 16)[0]
    i = 24 + r.randrange(ext_len)
    f[i] ^= 1 << r.randrange(8)
    s.link.send([bytes(f)])
    s.wait(lambda: s.streams[sid].ended is not None or s.closed is not None, 6.0)
    if s.closed is not None:
        s.violations.append(
            f"ATP-FRAME-006: an ext mutation on a SYN closed the session ({s.closed})"
        )
    elif s.probe() != "fin":
        s.violations.append("ATP-ERR-005: probe after an ext mutation did not complete")
