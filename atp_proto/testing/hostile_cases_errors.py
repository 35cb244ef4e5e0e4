"""Hostile cases: connection errors and stream errors, each with the code the spec names."""

from __future__ import annotations

import random
from typing import Any

import cbor2

from .hostile_session import Session, syn
from .hostile_verdicts import (
    BIG,
    EP,
    EWIN,
    EXT_BAD,
    SEQR,
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
    MORE,
    RST,
    SYN,
    WINDOW_UPDATE,
    frame,
)


# -- connection errors ------------------------------------------------------------------
@case()
def c_bad_version(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    v = r.choice([0, 2, 255])
    s.link.send([syn(sid, version=v) if r.random() < 0.5 else frame(DATA, HB, 0, version=v)])
    conn(s, EP, "ATP-FRAME-003")


@case()
def c_reserved_bit(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    s.link.send([syn(sid | 0x80000000) if r.random() < 0.5 else frame(DATA, HB, 0x80000000)])
    conn(s, EP, "ATP-FRAME-004")


@case()
def c_data_on_stream0(s: Session, r: random.Random) -> None:
    s.link.send([frame(DATA, r.choice([0, MORE, FIN]), 0, raw_payload=b"x")])
    conn(s, EP, "ATP-FRAME-011")


@case()
def c_update_on_stream0(s: Session, r: random.Random) -> None:
    t = r.choice([WINDOW_UPDATE, BUDGET_UPDATE])
    ext = {"credit": 100} if t == WINDOW_UPDATE else {"usage": {"tokens": 1}}
    s.link.send([frame(t, 0, 0, ext=ext)])
    conn(s, EP, "ATP-FRAME-012")


@case()
def c_caps_broken(s: Session, r: random.Random) -> None:
    ext = r.choice(
        [
            {},
            {"caps": 7},
            {"caps": {}},
            {"caps": {"versions": []}},
            {"caps": {"versions": [2, 3]}},
            {"caps": {"versions": "1"}},
        ]
    )
    s.link.send([frame(CAPABILITIES, 0, 0, ext=ext)])
    conn(s, EP, "ATP-FRAME-013/ATP-SESS-003/ATP-SESS-017")


@case()
def c_heartbeat_too_big(s: Session, r: random.Random) -> None:
    s.link.send([frame(DATA, HB, 0, raw_payload=b"h" * r.randint(65, 600))])
    conn(s, BIG, "ATP-TIME-003")


@case()
def c_stream0_bad_ext(s: Session, r: random.Random) -> None:
    raw = r.choice(
        [
            b"\xc1\x00",
            b"\xbf\xff",
            b"\xa2\x61a\x01\x61a\x02",
            b"\xa0\x00",
            b"\xa1\x61a\xf9\x7e\x00",
            b"\x80",
            b"\xa1\x01\x01",
        ]
    )
    s.link.send([frame(DATA, HB, 0, raw_ext=raw, raw_payload=b"p")])
    conn(s, EP, "ATP-FRAME-005/006")


@case()
def c_stream0_session_id(s: Session, r: random.Random) -> None:
    sid_val: Any = r.choice([5, "s" * 129, ["a"], b"x"])
    s.link.send([frame(DATA, HB, 0, ext={"session_id": sid_val}, raw_payload=b"p")])
    conn(s, EP, "ATP-EXT-010")


@case()
def c_error_on_stream0(s: Session, r: random.Random) -> None:
    """ATP-ERR-007 / ATP-ERR-011: the router ends the session and answers no ERROR."""
    code = r.choice(["EPROTO", "EX_ACME", "EINTERNAL"])
    s.link.send([frame(ERROR, 0, 0, ext={"error": {"code": code, "message": "bye"}})])
    s.wait_closed(6.0)
    if s.closed is None:
        s.violations.append("ATP-ERR-007: session open after the client's ERROR on stream 0")
    if s.session_errors:
        s.violations.append(f"ATP-ERR-011: router answered an ERROR with {s.session_errors}")


@case(kinds=("ws",))
def c_ws_message_ends_inside_frame(s: Session, r: random.Random) -> None:
    whole = syn(s.new_sid(), "cut")
    s.link.send([whole[: r.randint(1, len(whole) - 1)]])
    conn(s, EP, "ATP-WS-001")


@case(kinds=("ws",))
def c_json_not_an_object(s: Session, r: random.Random) -> None:
    s.link.send_text(
        r.choice(
            [
                "[1,2]",
                "42",
                '"x"',
                "{",
                "nul",
                '{"v":1,"v":1}',
                '{"stream_id":"a\\ud800"}',
                '{"stream_id": NaN}',
            ]
        )
    )
    conn(s, EP, "ATP-JSON-006/017")


@case(kinds=("quic",))
def c_quic_wrong_stream(s: Session, r: random.Random) -> None:
    a = opened(s)
    b = s.new_sid()
    if r.random() < 0.5:  # ATP stream b's SYN on a's QUIC stream
        s.link.send([syn(b)], qsid=s.link.qsid(a))
    else:  # a stream-0 frame off the control stream
        s.link.send([frame(DATA, HB, 0, raw_payload=b"p")], qsid=s.link.qsid(a))
    conn(s, EP, "ATP-QUIC-005")


@case(kinds=("quic",))
def c_quic_unidirectional(s: Session, r: random.Random) -> None:
    assert s.link.quic is not None
    q = s.link.quic.open(unidirectional=True)
    s.link.quic.send(q, syn(s.new_sid()))
    conn(s, EP, "ATP-QUIC-011")


# -- stream errors --------------------------------------------------------------------
@case()
def c_qos_out_of_range(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    s.link.send([syn(sid, qos=r.randint(4, 255))])
    stream(s, sid, EP, "ATP-FRAME-007")


@case()
def c_syn_payload_not_cbor(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    raw = r.choice(
        [
            b"\xff",
            b"\x82\x01",
            cbor2.dumps(1) + cbor2.dumps(2),
            b"\xc1\x00",
            b"\x5f\x41a\xff",
            b"\xa2\x61a\x01\x61a\x02",
            b"\x1c",
        ]
    )
    s.link.send([syn(sid, raw_payload=raw)])
    stream(s, sid, EP, "ATP-FRAME-024")


@case(weight=2)
def c_syn_ext_malformed(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    raw = r.choice(EXT_BAD)
    if r.random() < 0.3:
        deep: Any = 1
        for _ in range(16):
            deep = [deep]
        raw = cbor2.dumps({"window": {"max_tokens": 5}, "x": deep})  # depth 18
    s.link.send([frame(DATA, SYN, sid, 1, qos=1, raw_ext=raw, payload={"content": "x"})])
    stream(s, sid, EP, "ATP-FRAME-006/§12 depth")


@case()
def c_syn_ext_depth_16_is_fine(s: Session, r: random.Random) -> None:
    deep: Any = 1
    for _ in range(14):  # the map 1, 14 arrays, the 1 at depth 16
        deep = [deep]
    sid = s.new_sid()
    s.track(sid)
    s.link.send([syn(sid, ext={"x-deep": deep})])
    ok(s, sid, "§12 nesting depth 16")


@case()
def c_syn_session_id(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    s.link.send([syn(sid, ext={"session_id": r.choice([5, "s" * 129, None, {"a": 1}])})])
    stream(s, sid, EP, "ATP-EXT-010")


@case()
def c_syn_reserved_key(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    key = r.choice(
        [
            "v",
            "type",
            "stream_id",
            "msg_seq",
            "frag_seq",
            "flags",
            "qos",
            "ttl",
            "payload",
            "payload_b64",
        ]
    )
    s.link.send([syn(sid, ext={key: 1})])
    stream(s, sid, EP, "ATP-JSON-015")


@case()
def c_syn_window_bad(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    w = r.choice(
        [
            5,
            "x",
            [],
            {"max_tokens": -1},
            {"max_parallel": "2"},
            {"max_usd_micros": 1.5},
            {"max_tokens": True},
        ]
    )
    s.link.send([syn(sid, ext={"window": w})])
    stream(s, sid, EP, "ATP-BUDGET-008")


@case()
def c_syn_meta_bad(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    meta: dict[str, Any] = r.choice(
        [
            {"fanout": 0},
            {"fanout": 17},
            {"fanout": "2"},
            {"strategy": "nope"},
            {"quorum": 0},
            {"hedge": "yes"},
            {"comparator": "regex"},
            {"tool_permissions": "all"},
            {"data_scope": [1]},
            {"min_quality": "hi"},
        ]
    )
    s.link.send([syn(sid, meta=meta)])
    stream(s, sid, EP, "ATP-STRAT-009/ATP-SEC-016/§12 fanout")


@case()
def c_syn_id_not_greater(s: Session, r: random.Random) -> None:
    first = s.new_sid(gap=3)  # ids below it were never used
    s.track(first)
    s.link.send([syn(first)])
    if s.ended(first) != "fin":
        s.violations.append(f"setup: stream {first} did not complete")
        return
    low = first - r.randint(1, 2)
    s.link.send([syn(low)])
    if s.link.quic is not None:  # a new QUIC stream naming a lower id (ATP-QUIC-023)
        s.streams.setdefault(low, type(s.streams[first])(1)).ended = "conn"
        conn(s, EP, "ATP-QUIC-023")
        return
    stream(s, low, EP, "ATP-STREAM-002")


@case()
def c_data_on_never_opened(s: Session, r: random.Random) -> None:
    sid = s.new_sid(gap=r.randint(1, 50))
    s.link.send([frame(DATA, r.choice([0, FIN, MORE]), sid, 1, raw_payload=b"d")])
    stream(s, sid, EP, "ATP-STREAM-003")


@case()
def c_window_update_never_opened(s: Session, r: random.Random) -> None:
    sid = s.new_sid(gap=r.randint(1, 50))
    s.link.send([frame(WINDOW_UPDATE, 0, sid, ext={"credit": 1000})])
    stream(s, sid, EP, "ATP-STREAM-013")


@case()
def c_syn_on_open_stream(s: Session, r: random.Random) -> None:
    sid = opened(s)
    s.link.send([syn(sid, "again", "slow", seq=2)])
    stream(s, sid, EP, "ATP-STREAM-004")


@case()
def c_data_after_fin(s: Session, r: random.Random) -> None:
    sid = opened(s, flags=SYN | FIN)
    s.link.send([frame(DATA, 0, sid, 2, raw_payload=b"late")])
    stream(s, sid, EP, "ATP-STREAM-005")


@case(weight=2)
def c_wrong_msg_seq(s: Session, r: random.Random) -> None:
    sid = opened(s)
    seq = r.choice([0, 1, 3, 7, 0xFFFFFFFF])
    s.link.send([frame(DATA, 0, sid, seq, raw_payload=b"in")])
    stream(s, sid, SEQR, "ATP-SEQ-004")


@case()
def c_wrong_frag_seq(s: Session, r: random.Random) -> None:
    sid = opened(s)
    if r.random() < 0.5:
        fs = [frame(DATA, 0, sid, 2, frag=r.randint(1, 9), raw_payload=b"x")]
    else:
        fs = [
            frame(DATA, CONT, sid, 2, raw_payload=b"a"),
            frame(DATA, 0, sid, 2, frag=r.choice([0, 2, 5]), raw_payload=b"b"),
        ]
    s.link.send(fs)
    stream(s, sid, SEQR, "ATP-SEQ-004")


@case()
def c_syn_on_later_fragment(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    s.link.send([syn(sid, frag=r.randint(1, 5))])
    stream(s, sid, EP, "ATP-SEQ-006 (before ATP-SEQ-004)")


@case()
def c_ext_on_later_fragment(s: Session, r: random.Random) -> None:
    sid = opened(s)
    s.link.send(
        [
            frame(DATA, CONT, sid, 2, raw_payload=b"a"),
            frame(DATA, 0, sid, 2, frag=1, ext={"x": 1}, raw_payload=b"b"),
        ]
    )
    stream(s, sid, EP, "ATP-SEQ-006")


@case()
def c_fin_on_cont_fragment(s: Session, r: random.Random) -> None:
    sid = opened(s)
    s.link.send([frame(DATA, CONT | FIN, sid, 2, raw_payload=b"a")])
    stream(s, sid, EP, "ATP-SEQ-006")


@case(weight=0.3)
def c_frame_over_max_frame_size(s: Session, r: random.Random) -> None:
    sid = opened(s, "hold")
    n = 1_048_577 + r.randint(0, 20)
    s.link.send([frame(DATA, 0, sid, 2, raw_payload=b"z" * n)])
    stream(s, sid, BIG, "ATP-LIMIT-001")


@case(weight=0.5)
def c_ext_over_max_ext_size(s: Session, r: random.Random) -> None:
    sid = s.new_sid()
    s.link.send([syn(sid, ext={"x-big": "e" * (65_537 + r.randint(0, 100))})])
    stream(s, sid, BIG, "§12 max_ext_size")


@case(weight=0.5)
def c_data_over_credit(s: Session, r: random.Random) -> None:
    sid = opened(s, "hold")
    s.link.send([frame(DATA, 0, sid, 2, raw_payload=b"c" * (262_144 + r.randint(0, 9)))])
    stream(s, sid, EWIN, "ATP-FLOW-002")


@case()
def c_window_update_bad(s: Session, r: random.Random) -> None:
    sid = opened(s)
    ext, want, rule = r.choice(
        [
            ({"credit": 0}, EP, "ATP-FLOW-004"),
            ({}, EP, "ATP-FRAME-019"),
            ({"x-other": 1}, EP, "ATP-FRAME-019"),
            ({"credit": -5}, EP, "ATP-FRAME-023"),
            ({"credit": "9"}, EP, "ATP-FRAME-023"),
            ({"window": 3}, EP, "ATP-FRAME-020"),
            ({"window": {"max_tokens": -1}}, EP, "ATP-FRAME-020"),
            ({"credit": 2**31 - 1}, EWIN, "ATP-FLOW-004 (window past 2^31-1)"),
            ({"credit": 2**31}, EP, "ATP-FLOW-004 (a credit outside 1..2^31-1)"),
        ]
    )
    s.link.send([frame(WINDOW_UPDATE, 0, sid, ext=ext)])
    stream(s, sid, want, rule)


@case()
def c_budget_update_from_client(s: Session, r: random.Random) -> None:
    sid = opened(s)
    s.link.send([frame(BUDGET_UPDATE, 0, sid, ext={"usage": {"tokens": 1}})])
    stream(s, sid, EP, "ATP-FRAME-014")


@case()
def c_caps_on_a_stream(s: Session, r: random.Random) -> None:
    sid = opened(s)
    s.link.send([frame(CAPABILITIES, 0, sid, ext={"caps": {"versions": [1]}})])
    stream(s, sid, EP, "ATP-FRAME-013")


@case()
def c_error_without_message(s: Session, r: random.Random) -> None:
    sid = opened(s)
    err = r.choice(
        [
            {"code": "EPROTO"},
            {"message": "m"},
            {"code": 5, "message": "m"},
            {"code": "EPROTO", "message": 7},
        ]
    )
    s.link.send([frame(ERROR, RST, sid, ext={"error": err})])
    stream(s, sid, EP, "ATP-FRAME-015")


@case(weight=0.3)
def c_too_many_streams(s: Session, r: random.Random) -> None:
    sids = [s.new_sid() for _ in range(101)]
    for sid in sids:
        s.track(sid)
    # the hold adapter keeps them open; one that ended anyway (shed, EPREEMPT) frees its
    # place (ATP-STREAM-007), and then the 101st may run
    s.link.send([syn(sid, "hold me open " * 6, "hold") for sid in sids])
    last = sids[-1]
    s.ended(last)
    view = s.streams[last]
    freed = any(s.streams[sid].ended is not None for sid in sids[:-1])
    if view.ended != "EWINDOW" and not (freed and view.ended in ("fin", "EPREEMPT")):
        s.violations.append(f"ATP-STREAM-008: 101st stream ended {view.ended!r}, spec: EWINDOW")
    else:
        err = view.frames[-1].ext.get("error", {})
        if not isinstance(err.get("retry_after_ms"), int):
            s.violations.append("ATP-ERR-004: EWINDOW refusal without retry_after_ms")
    s.link.send([frame(DATA, RST, sid) for sid in sids[:-1]])
    for sid in sids[:-1]:
        s.ended(sid, 0.01)
        s.streams[sid].ended = s.streams[sid].ended or "rst"
    end = s.probe()
    if end != "fin":
        s.violations.append(f"ATP-STREAM-007: probe after resetting 100 streams ended {end!r}")


@case()
def c_syn_seq_near_wrap(s: Session, r: random.Random) -> None:
    """A SYN whose msg_seq is near 2³²−1 (ATP-SEQ-005): the router's messages start at
    SYN.msg_seq + 1 and never wrap (the session's oracle checks each number); it ends
    the stream with its FINAL at 2³²−1 at the latest, or with ERROR EPROTO (no room),
    never with EINTERNAL (ATP-ERR-010 is for the router's own failures)."""
    k = r.randint(1, 4)
    sid = s.new_sid()
    s.track(sid, syn_seq=2**32 - k)
    s.link.send([syn(sid, "near the end", seq=2**32 - k)])
    end = s.ended(sid)
    if end not in ("fin", "EPROTO"):
        s.violations.append(f"ATP-SEQ-005: SYN msg_seq 2^32-{k} ended {end!r}")
    if s.probe() != "fin":
        s.violations.append("ATP-ERR-005: probe after a SYN near the msg_seq end")
