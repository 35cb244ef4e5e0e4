"""Writes ``frames.json``, the binary frame vectors (run ``python -m
conformance.vectors.build_frames`` after editing; the file is checked in, and
tests/conformance/test_data.py checks it is what this script writes).

The bytes are built by hand (``atp_proto.testing.frames``: ``struct`` + ``cbor2``, never
our encoder), and every expected outcome is written here from the spec's text, not taken
from our decoder. Each vector names the requirement IDs it checks:

* valid: ``frames`` is the list of JSON mappings (spec §13.3) the bytes decode to;
* invalid: ``error`` (the ATP code) and ``scope`` (``stream`` | ``connection``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2

from atp_proto.testing.frames import (
    F_FIN,
    F_HB,
    F_MORE,
    F_SYN,
    HEADER,
    T_CAPABILITIES,
    T_DATA,
    T_ERROR,
    T_WINDOW_UPDATE,
    build_frame,
)

OUT = Path(__file__).with_name("frames.json")

_SYN_EXT = {"window": {"max_parallel": 4, "max_tokens": 50000}}
_TASK = {"type": "agent.task", "content": {"prompt": "hello"}}


def _raw(
    ftype: int, flags: int, sid: int, seq: int, ext_b: bytes, pay_b: bytes, **kw: int
) -> bytes:
    """A frame with ext bytes given raw (for malformed CBOR)."""
    head = HEADER.pack(
        kw.get("version", 1),
        ftype,
        flags,
        kw.get("qos", 0),
        sid,
        seq,
        kw.get("frag", 0),
        kw.get("ttl", 0),
        len(ext_b),
        len(pay_b),
    )
    return head + ext_b + pay_b


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def vectors() -> list[dict[str, Any]]:
    v: list[dict[str, Any]] = []

    def ok(
        vid: str, reqs: list[str], data: bytes, frames: list[dict[str, Any]], title: str
    ) -> None:
        v.append(
            {"id": vid, "title": title, "requirements": reqs, "hex": data.hex(), "frames": frames}
        )

    def bad(vid: str, reqs: list[str], data: bytes, error: str, scope: str, title: str) -> None:
        v.append(
            {
                "id": vid,
                "title": title,
                "requirements": reqs,
                "hex": data.hex(),
                "error": error,
                "scope": scope,
            }
        )

    syn = build_frame(T_DATA, F_SYN, 1, 1, qos=1, ttl=8, ext=_SYN_EXT, payload=_TASK)
    syn_map = {
        "v": 1,
        "stream_id": 1,
        "msg_seq": 1,
        "frag_seq": 0,
        "flags": ["SYN"],
        "qos": "gold",
        "ttl": 8,
        "window": _SYN_EXT["window"],
        "payload": _TASK,
    }
    ok(
        "frame.valid.syn",
        ["ATP-FRAME-001", "ATP-FRAME-002"],
        syn,
        [syn_map],
        "a SYN with a window and a CBOR payload",
    )
    partial = build_frame(
        T_DATA, F_MORE, 1, 2, payload={"type": "agent.result.partial", "content": {"chunk": 0}}
    )
    final = build_frame(
        T_DATA,
        F_FIN,
        1,
        3,
        ext={"telemetry": {"tokens": 5, "usd_micros": 7, "latency_ms": 9}},
        payload={"type": "agent.result.final", "content": {"ok": True}},
    )
    ok(
        "frame.valid.back-to-back",
        ["ATP-FRAME-009"],
        partial + final,
        [
            {
                "v": 1,
                "stream_id": 1,
                "msg_seq": 2,
                "frag_seq": 0,
                "flags": ["MORE"],
                "payload": {"type": "agent.result.partial", "content": {"chunk": 0}},
            },
            {
                "v": 1,
                "stream_id": 1,
                "msg_seq": 3,
                "frag_seq": 0,
                "flags": ["FIN"],
                "telemetry": {"tokens": 5, "usd_micros": 7, "latency_ms": 9},
                "payload": {"type": "agent.result.final", "content": {"ok": True}},
            },
        ],
        "two whole frames back to back in one message",
    )
    ok(
        "frame.valid.heartbeat",
        ["ATP-FRAME-011", "ATP-FRAME-018"],
        build_frame(T_DATA, F_HB, 0),
        [{"v": 1, "stream_id": 0, "msg_seq": 0, "frag_seq": 0, "flags": ["HB"]}],
        "a heartbeat on stream 0",
    )
    ok(
        "frame.valid.unknown-type",
        ["ATP-FRAME-010"],
        build_frame(0x90, 0, 3, raw_payload=b"\xff\xfe", frag_seq=9, qos=9),
        [
            {
                "v": 1,
                "type": 144,
                "stream_id": 3,
                "msg_seq": 0,
                "frag_seq": 9,
                "flags": [],
                "qos": 9,
                "payload_b64": "//4=",
            }
        ],
        "an unknown frame type with a body that is not CBOR and qos 9: kept, never refused",
    )
    ok(
        "frame.valid.reserved-flag",
        ["ATP-FLAG-001"],
        build_frame(T_DATA, F_MORE | 0x80, 1, 2, payload={"type": "x"}),
        [
            {
                "v": 1,
                "stream_id": 1,
                "msg_seq": 2,
                "frag_seq": 0,
                "flags": ["MORE"],
                "payload": {"type": "x"},
            }
        ],
        "a reserved flag bit (0x80) is ignored",
    )
    ok(
        "frame.valid.unknown-ext-key",
        ["ATP-EXT-001", "ATP-EXT-004"],
        build_frame(
            T_DATA,
            F_MORE,
            1,
            2,
            ext={"x_vendor": [1, 2], "telemetry": {"tokens": 1, "x_new": True}},
            payload={"type": "x"},
        ),
        [
            {
                "v": 1,
                "stream_id": 1,
                "msg_seq": 2,
                "frag_seq": 0,
                "flags": ["MORE"],
                "x_vendor": [1, 2],
                "telemetry": {"tokens": 1, "x_new": True},
                "payload": {"type": "x"},
            }
        ],
        "unknown ext keys, also inside a known ext map, are accepted",
    )
    ok(
        "frame.valid.ext-bytes",
        ["ATP-JSON-011", "ATP-FRAME-006"],
        build_frame(
            T_DATA,
            F_MORE,
            1,
            2,
            ext={"x_blob": b"\x00\x01\xfe\xff", "x_list": [b"at"]},
            payload={"type": "x"},
        ),
        [
            {
                "v": 1,
                "stream_id": 1,
                "msg_seq": 2,
                "frag_seq": 0,
                "flags": ["MORE"],
                "x_blob": "AAH+/w==",
                "x_list": ["YXQ="],
                "payload": {"type": "x"},
            }
        ],
        "byte strings in ext decode to padded base64 text (also inside an array); the "
        "mapping is not lossless for them, so no encode case",
    )
    v[-1]["text_lossy"] = True
    ok(
        "frame.valid.window-update",
        ["ATP-FLOW-004"],
        build_frame(T_WINDOW_UPDATE, 0, 1, ext={"credit": 65536}),
        [
            {
                "v": 1,
                "type": "WINDOW_UPDATE",
                "stream_id": 1,
                "msg_seq": 0,
                "frag_seq": 0,
                "flags": [],
                "credit": 65536,
            }
        ],
        "a WINDOW_UPDATE granting 64 KiB of credit",
    )

    # -- framing: connection errors
    bad(
        "frame.truncated-header",
        ["ATP-WS-001", "ATP-FRAME-001"],
        syn[:10],
        "EPROTO",
        "connection",
        "a message that ends inside the 24-byte header",
    )
    bad(
        "frame.truncated-body",
        ["ATP-WS-001"],
        syn[:-3],
        "EPROTO",
        "connection",
        "a message that ends inside the body (payload_len says 3 bytes more)",
    )
    bad(
        "frame.bad-length",
        ["ATP-WS-001", "ATP-FRAME-009"],
        syn + syn[:30],
        "EPROTO",
        "connection",
        "a whole frame then the start of another in the same message",
    )
    bad(
        "frame.version-2",
        ["ATP-FRAME-003"],
        build_frame(T_DATA, F_SYN, 1, 1, payload=_TASK, version=2),
        "EPROTO",
        "connection",
        "version 2",
    )
    bad(
        "frame.version-0-unknown-type",
        ["ATP-FRAME-003", "ATP-FRAME-010"],
        build_frame(0x90, 0, 3, raw_payload=b"zz", version=0),
        "EPROTO",
        "connection",
        "version 0 on a frame of an unknown type (the version rule still applies)",
    )
    bad(
        "frame.reserved-stream-bit",
        ["ATP-FRAME-004"],
        build_frame(T_DATA, F_SYN, 0x80000001, 1, payload=_TASK),
        "EPROTO",
        "connection",
        "the reserved high bit of stream_id set",
    )
    bad(
        "frame.data-stream0-no-hb",
        ["ATP-FRAME-011"],
        build_frame(T_DATA, F_MORE, 0, 0, payload={"type": "x"}),
        "EPROTO",
        "connection",
        "DATA on stream 0 without HB",
    )
    bad(
        "frame.hb-qos-4",
        ["ATP-FRAME-007"],
        build_frame(T_DATA, F_HB, 0, 0, qos=4, raw_payload=b"ping"),
        "EPROTO",
        "connection",
        "qos 4 on a heartbeat: stream 0 has no stream to end",
    )
    bad(
        "frame.window-update-stream0",
        ["ATP-FRAME-012"],
        build_frame(T_WINDOW_UPDATE, 0, 0, ext={"credit": 10}),
        "EPROTO",
        "connection",
        "WINDOW_UPDATE on stream 0",
    )
    bad(
        "frame.budget-update-stream0",
        ["ATP-FRAME-012"],
        build_frame(3, 0, 0, ext={"usage": {"tokens": 1}}),
        "EPROTO",
        "connection",
        "BUDGET_UPDATE on stream 0",
    )
    bad(
        "frame.caps-without-caps",
        ["ATP-FRAME-013"],
        build_frame(T_CAPABILITIES, 0, 0, ext={"x": 1}),
        "EPROTO",
        "connection",
        "CAPABILITIES without a caps map",
    )
    bad(
        "frame.hb-oversized",
        ["ATP-LIMIT-001", "ATP-TIME-003"],
        build_frame(T_DATA, F_HB, 0, raw_payload=b"\0" * 65),
        "ETOOBIG",
        "connection",
        "a heartbeat payload over 64 bytes",
    )
    bad(
        "frame.stream0-ext-tag",
        ["ATP-FRAME-006"],
        _raw(T_CAPABILITIES, 0, 0, 0, b"\xa1\x64caps\xc1\x00", b""),
        "EPROTO",
        "connection",
        "a CBOR tag in ext on stream 0",
    )

    # -- ext and control payloads: stream errors
    bad(
        "frame.qos-4",
        ["ATP-FRAME-007"],
        build_frame(T_DATA, F_SYN, 1, 1, qos=4, payload=_TASK),
        "EPROTO",
        "stream",
        "qos 4 on a SYN",
    )
    bad(
        "frame.ext-not-map",
        ["ATP-FRAME-005"],
        _raw(T_DATA, F_SYN, 1, 1, cbor2.dumps([1, 2]), b""),
        "EPROTO",
        "stream",
        "ext is a CBOR array",
    )
    bad(
        "frame.ext-int-key",
        ["ATP-FRAME-005"],
        _raw(T_DATA, F_SYN, 1, 1, cbor2.dumps({1: 2}), b""),
        "EPROTO",
        "stream",
        "ext map with an integer key",
    )
    bad(
        "frame.ext-trailing",
        ["ATP-FRAME-005", "ATP-FRAME-006"],
        _raw(T_DATA, F_SYN, 1, 1, cbor2.dumps({"a": 1}) + b"\x00", b""),
        "EPROTO",
        "stream",
        "a byte after the ext map",
    )
    bad(
        "frame.ext-indefinite",
        ["ATP-FRAME-005", "ATP-FRAME-006"],
        _raw(T_DATA, F_SYN, 1, 1, b"\xbf\x61a\x01\xff", b""),
        "EPROTO",
        "stream",
        "ext is an indefinite-length map",
    )
    bad(
        "frame.ext-tag",
        ["ATP-FRAME-006"],
        _raw(T_DATA, F_SYN, 1, 1, b"\xa1\x61a\xc1\x00", b""),
        "EPROTO",
        "stream",
        "a CBOR tag (epoch time) inside ext",
    )
    bad(
        "frame.ext-duplicate-key",
        ["ATP-FRAME-006"],
        _raw(T_DATA, F_SYN, 1, 1, b"\xa2\x61a\x01\x61a\x02", b""),
        "EPROTO",
        "stream",
        "a duplicate key in ext",
    )
    bad(
        "frame.ext-nan",
        ["ATP-FRAME-006"],
        _raw(T_DATA, F_SYN, 1, 1, b"\xa1\x61a\xf9\x7e\x00", b""),
        "EPROTO",
        "stream",
        "a NaN float in ext",
    )
    bad(
        "frame.ext-bad-utf8",
        ["ATP-FRAME-005"],
        _raw(T_DATA, F_SYN, 1, 1, b"\xa1\x61a\x62\xc3\x28", b""),
        "EPROTO",
        "stream",
        "a text string in ext that is not UTF-8",
    )
    ok(
        "frame.valid.ext-depth-16",
        ["ATP-FRAME-006", "ATP-LIMIT-001"],
        _raw(T_DATA, F_SYN, 1, 1, cbor2.dumps({"x_deep": _nested(14)}), cbor2.dumps(_TASK)),
        [
            {
                "v": 1,
                "stream_id": 1,
                "msg_seq": 1,
                "frag_seq": 0,
                "flags": ["SYN"],
                "x_deep": _nested(14),
                "payload": _TASK,
            }
        ],
        "ext values 16 deep, the limit (the ext map at depth 1, the innermost 1 at 16)",
    )
    bad(
        "frame.ext-depth-17",
        ["ATP-FRAME-006", "ATP-LIMIT-001"],
        _raw(T_DATA, F_SYN, 1, 1, cbor2.dumps({"x_deep": _nested(15)}), cbor2.dumps(_TASK)),
        "EPROTO",
        "stream",
        "ext values 17 deep, one past the limit",
    )
    bad(
        "frame.ext-deep",
        ["ATP-FRAME-006", "ATP-LIMIT-001"],
        _raw(T_DATA, F_SYN, 1, 1, cbor2.dumps({"x_deep": _nested(40)}), b""),
        "EPROTO",
        "stream",
        "ext nested 40 levels deep (limit 16)",
    )
    bad(
        "frame.session-id-int",
        ["ATP-EXT-010"],
        build_frame(T_DATA, F_SYN, 1, 1, ext={"session_id": 5}, payload=_TASK),
        "EPROTO",
        "stream",
        "session_id that is not text",
    )
    bad(
        "frame.session-id-long",
        ["ATP-EXT-010"],
        build_frame(T_DATA, F_SYN, 1, 1, ext={"session_id": "s" * 129}, payload=_TASK),
        "EPROTO",
        "stream",
        "session_id of 129 characters",
    )
    bad(
        "frame.caps-on-stream",
        ["ATP-FRAME-013"],
        build_frame(T_CAPABILITIES, 0, 3, ext={"caps": {"versions": [1]}}),
        "EPROTO",
        "stream",
        "CAPABILITIES on stream 3",
    )
    bad(
        "frame.error-without-message",
        ["ATP-FRAME-015"],
        build_frame(T_ERROR, 0, 1, ext={"error": {"code": "EPROTO"}}),
        "EPROTO",
        "stream",
        "an ERROR whose error map has no message",
    )
    bad(
        "frame.error-without-map",
        ["ATP-FRAME-015"],
        build_frame(T_ERROR, 0, 1, ext={"x": 1}),
        "EPROTO",
        "stream",
        "an ERROR without an error map",
    )
    bad(
        "frame.wu-empty",
        ["ATP-FRAME-019"],
        build_frame(T_WINDOW_UPDATE, 0, 1, ext={"x": 1}),
        "EPROTO",
        "stream",
        "a WINDOW_UPDATE with neither credit nor window",
    )
    bad(
        "frame.wu-credit-0",
        ["ATP-FLOW-004"],
        build_frame(T_WINDOW_UPDATE, 0, 1, ext={"credit": 0}),
        "EPROTO",
        "stream",
        "a credit increment of 0",
    )
    bad(
        "frame.wu-credit-2-31",
        ["ATP-FLOW-004", "ATP-FRAME-023"],
        build_frame(T_WINDOW_UPDATE, 0, 1, ext={"credit": 2**31}),
        "EPROTO",
        "stream",
        "a credit of 2^31, outside 1 .. 2^31-1: malformed whatever the window holds",
    )
    bad(
        "frame.wu-window-not-map",
        ["ATP-FRAME-020"],
        build_frame(T_WINDOW_UPDATE, 0, 1, ext={"window": 5}),
        "EPROTO",
        "stream",
        "a WINDOW_UPDATE window that is not a map",
    )
    bad(
        "frame.wu-window-negative",
        ["ATP-FRAME-020"],
        build_frame(T_WINDOW_UPDATE, 0, 1, ext={"window": {"max_tokens": -1}}),
        "EPROTO",
        "stream",
        "a WINDOW_UPDATE window with max_tokens -1",
    )
    bad(
        "frame.syn-window-negative",
        ["ATP-BUDGET-008"],
        build_frame(T_DATA, F_SYN, 1, 1, ext={"window": {"max_tokens": -5}}, payload=_TASK),
        "EPROTO",
        "stream",
        "a SYN window with max_tokens -5 (never read as unlimited)",
    )
    bad(
        "frame.syn-window-float",
        ["ATP-BUDGET-008"],
        build_frame(T_DATA, F_SYN, 1, 1, ext={"window": {"max_parallel": 1.5}}, payload=_TASK),
        "EPROTO",
        "stream",
        "a SYN window with max_parallel 1.5",
    )
    return v


def document() -> dict[str, Any]:
    return {
        "description": "Binary frame vectors (spec §3-§5, §12). 'hex' is one WebSocket binary "
        "message. Valid vectors list the JSON mappings (spec §13.3) of the frames it holds; "
        "invalid ones the ATP error code and its scope ('stream' or 'connection'). The stateless "
        "rules of ATP-FRAME-023 apply; no session state is assumed. Schema: "
        "conformance/schema/vectors.schema.json.",
        "vectors": vectors(),
    }


def main() -> None:
    OUT.write_text(json.dumps(document(), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
