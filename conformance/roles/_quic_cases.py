"""The binding's own router cases over QUIC (``router.quic.binding.…``, ``router.quic.auth.…``):
one or more for each ATP-QUIC MUST a client can observe, as data for
:mod:`conformance.roles.router_quic`.

Each entry: id (after ``router.quic.``), requirement IDs, title, needs (``token``,
``limited_token``, ``bad_token``, ``adapter``, ``no_caps``: no CAPABILITIES first,
``no_auto_fin``: the client keeps its side of QUIC streams open), and steps — the scenario
language of :mod:`conformance.scenario` plus the QUIC steps of ``router_quic._steps``
(``quic_send`` on a chosen QUIC stream, ``quic_reset``, ``quic_stop``, ``quic_close``,
``expect_quic_close``, ``expect_quic_fin``, ``expect_reset_stream``,
``expect_stop_sending``, ``expect_no_stop_sending``, and a few whole cases in code).
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["BINDING"]

_HB = {"type": "DATA", "flags": ["HB"], "stream_id": 0, "payload_b64": "AQIDBA=="}


def _wu(sid: int) -> dict[str, Any]:
    return {"type": "WINDOW_UPDATE", "stream_id": sid, "credit": 1024}


def _syn(sid: int) -> dict[str, Any]:
    return {
        "type": "DATA",
        "flags": ["SYN"],
        "stream_id": sid,
        "msg_seq": 1,
        "ttl": 8,
        "qos": "gold",
        "payload": {"type": "agent.task", "content": {"prompt": "{task}"}},
    }


def _close(code: str, *ids: str) -> dict[str, Any]:
    return {"expect_quic_close": {"code": code, "violated": list(ids)}}


#: id, requirements, title, needs, steps (the scenario language plus the quic_* steps)
BINDING: list[tuple[str, tuple[str, ...], str, tuple[str, ...], list[dict[str, Any]]]] = [
    (
        "binding.control-stream",
        ("ATP-QUIC-002", "ATP-QUIC-011", "ATP-QUIC-003"),
        "the router answers stream-0 frames on QUIC stream 0 and each ATP stream on the "
        "QUIC stream the client opened for it, binary frames back to back, opening none",
        (),
        [
            {"open": {"stream_id": 1}},
            {"open": {"stream_id": 3}},
            {"send": _HB},
            {"expect": {"stream_id": 0, "flags": {"has": ["HB", "ACK"]}}},
            {"expect_end": {"stream_id": 1, "how": "fin"}},
            {"expect_end": {"stream_id": 3, "how": "fin"}},
        ],
    ),
    (
        "binding.alpn",
        ("ATP-QUIC-001",),
        "a handshake offering only ALPN h3 fails; one offering atp/1 negotiates atp/1",
        (),
        [{"quic_alpn": {}}],
    ),
    (
        "binding.json-refused",
        ("ATP-QUIC-003", "ATP-QUIC-004"),
        "a frame in the JSON text mapping on the control stream is a connection error "
        "EPROTO: QUIC closes with 0x100",
        ("no_caps",),
        [
            {"quic_send": {"on": 0, "text": '{"type":"CAPABILITIES","caps":{"versions":[1]}}'}},
            # with auth on, not CAPABILITIES first is ESEC as well (ATP-QUIC-008)
            dict(_close("EPROTO", "ATP-QUIC-003"), or_with_token="ESEC"),
        ],
    ),
    (
        "binding.stream0-off-control",
        ("ATP-QUIC-005", "ATP-QUIC-004"),
        "a stream-0 frame (a heartbeat) on a new QUIC stream is a connection error EPROTO",
        (),
        [{"quic_send": {"on": "new", "frame": _HB}}, _close("EPROTO", "ATP-QUIC-005")],
    ),
    (
        "binding.frame-for-other-stream",
        ("ATP-QUIC-005",),
        "a WINDOW_UPDATE for ATP stream 3 on stream 1's QUIC stream is a connection error EPROTO",
        (),
        [
            {"open": {"stream_id": 1, "behaviour": "slow:300"}},
            {"open": {"stream_id": 3, "behaviour": "slow:300"}},
            {"quic_send": {"on": 1, "frame": _wu(3)}},
            _close("EPROTO", "ATP-QUIC-005"),
        ],
    ),
    (
        "binding.frame-for-ended-stream",
        ("ATP-QUIC-016", "ATP-QUIC-005"),
        "once stream 1 has ended, a WINDOW_UPDATE for it on stream 3's QUIC stream is still "
        "a connection error EPROTO, not a frame to discard (ATP-FLAG-004)",
        ("no_auto_fin",),
        [
            {"open": {"stream_id": 1}},
            {"expect_end": {"stream_id": 1, "how": "fin"}},
            {"open": {"stream_id": 3}},
            {"expect_end": {"stream_id": 3, "how": "fin"}},
            {"quic_send": {"on": 3, "frame": _wu(1)}},
            _close("EPROTO", "ATP-QUIC-016"),
        ],
    ),
    (
        "binding.second-quic-stream",
        ("ATP-QUIC-011",),
        "a second QUIC stream whose first frame names ATP stream 1, which has one, is a "
        "connection error EPROTO",
        (),
        [
            {"open": {"stream_id": 1, "behaviour": "slow:300"}},
            {"quic_send": {"on": "new", "frame": _wu(1)}},
            _close("EPROTO", "ATP-QUIC-011"),
        ],
    ),
    (
        "binding.syn-on-ended-id",
        ("ATP-QUIC-023",),
        "stream 1 served to its end (both sides of its QUIC stream ended), a new QUIC stream "
        "whose SYN names ATP stream 1 again is a connection error EPROTO, not a stream error",
        (),
        [
            {"open": {"stream_id": 1}},
            {"expect_end": {"stream_id": 1, "how": "fin"}},
            {"quic_send": {"on": "new", "frame": _syn(1)}},
            _close("EPROTO", "ATP-QUIC-023"),
        ],
    ),
    (
        "binding.id-below-earlier",
        ("ATP-QUIC-023",),
        "after stream 5, a new QUIC stream whose SYN names ATP stream 3 (never used, but not "
        "above 5) is a connection error EPROTO",
        (),
        [
            {"open": {"stream_id": 5}},
            {"expect_end": {"stream_id": 5, "how": "fin"}},
            {"quic_send": {"on": "new", "frame": _syn(3)}},
            _close("EPROTO", "ATP-QUIC-023"),
        ],
    ),
    (
        "binding.late-frame-on-new-stream",
        ("ATP-QUIC-023",),
        "a WINDOW_UPDATE for ended stream 1 as the first frame of a new QUIC stream is a "
        "connection error EPROTO, not a late frame to discard (ATP-FLAG-004)",
        (),
        [
            {"open": {"stream_id": 1}},
            {"expect_end": {"stream_id": 1, "how": "fin"}},
            {"quic_send": {"on": "new", "frame": _wu(1)}},
            _close("EPROTO", "ATP-QUIC-023"),
        ],
    ),
    (
        "binding.rst-never-opened",
        ("ATP-FLAG-009", "ATP-QUIC-006"),
        "a bare RST on ATP stream 9, never opened, as the first frame of its QUIC stream is a "
        "stream error EPROTO on that QUIC stream, with FIN and STOP_SENDING 0x100; the "
        "session goes on",
        ("no_auto_fin",),
        [
            {"send": {"type": "DATA", "flags": ["RST"], "stream_id": 9, "msg_seq": 1}},
            {"expect_end": {"stream_id": 9, "code": "EPROTO", "violated": ["ATP-FLAG-009"]}},
            {"expect_quic_fin": {"stream_id": 9}},
            {"expect_stop_sending": {"stream_id": 9, "code": "EPROTO"}},
            {"still_serves": ["ATP-FLAG-009"]},
        ],
    ),
    (
        "binding.early-fin",
        ("ATP-QUIC-024", "ATP-QUIC-012"),
        "the client's QUIC FIN on an open stream's QUIC stream is a stream error EPROTO "
        "(ERROR with the router's FIN, no STOP_SENDING); the session goes on",
        (),
        [
            # the SYN's message left unfinished (CONT): the stream is open at any router,
            # however fast it answers and with or without an adapter
            {"open": {"stream_id": 1, "extra": {"flags": ["SYN", "CONT"]}}},
            {"quic_send": {"on": 1, "data": "", "fin": True}},
            {"expect_end": {"stream_id": 1, "code": "EPROTO", "violated": ["ATP-QUIC-024"]}},
            {"expect_quic_fin": {"stream_id": 1}},
            {"expect_no_stop_sending": {"stream_id": 1}},
            {"still_serves": ["ATP-QUIC-024"]},
        ],
    ),
    (
        "binding.early-fin-cancels",
        ("ATP-QUIC-024", "ATP-ADAPT-009"),
        "the client's early QUIC FIN on a stalled stream ends it with EPROTO and cancels "
        "its adapter call",
        ("adapter",),
        [
            {"open": {"stream_id": 1, "behaviour": "stall"}},
            {"adapter_event": {"event": "stream_start"}},
            {"quic_send": {"on": 1, "data": "", "fin": True}},
            {"expect_end": {"stream_id": 1, "code": "EPROTO", "violated": ["ATP-QUIC-024"]}},
            {"adapter_event": {"event": "cancelled", "violated": ["ATP-QUIC-024"]}},
        ],
    ),
    (
        "binding.control-fin",
        ("ATP-QUIC-025",),
        "the client's QUIC FIN on the control stream, a stream open, is a connection error EPROTO",
        (),
        [
            {"open": {"stream_id": 1, "behaviour": "slow:400"}},
            {"quic_send": {"on": 0, "data": "", "fin": True}},
            _close("EPROTO", "ATP-QUIC-025"),
        ],
    ),
    (
        "binding.control-reset",
        ("ATP-QUIC-025",),
        "RESET_STREAM on the control stream is a connection error EPROTO",
        (),
        [
            {"open": {"stream_id": 1, "behaviour": "slow:400"}},
            {"quic_reset": {"stream_id": 0, "code": 0x100}},
            _close("EPROTO", "ATP-QUIC-025"),
        ],
    ),
    (
        "binding.control-stop",
        ("ATP-QUIC-025",),
        "STOP_SENDING on the control stream is a connection error EPROTO",
        (),
        [
            {"open": {"stream_id": 1, "behaviour": "slow:400"}},
            {"quic_stop": {"stream_id": 0, "code": 0x100}},
            _close("EPROTO", "ATP-QUIC-025"),
        ],
    ),
    (
        "binding.unidirectional",
        ("ATP-QUIC-011",),
        "a frame on a client-opened unidirectional QUIC stream is a connection error EPROTO",
        (),
        [{"quic_send": {"on": "uni", "frame": _HB}}, _close("EPROTO", "ATP-QUIC-011")],
    ),
    (
        "binding.close-code",
        ("ATP-QUIC-004", "ATP-TIME-003"),
        "a heartbeat over 64 bytes is a connection error ETOOBIG: QUIC closes with 0x10b",
        (),
        [
            {"send": dict(_HB, payload_b64=base64.b64encode(bytes(65)).decode())},
            _close("ETOOBIG", "ATP-QUIC-004"),
        ],
    ),
    (
        "binding.error-then-fin",
        ("ATP-QUIC-006", "ATP-QUIC-013"),
        "a stream error goes as the ERROR frame on the stream's QUIC stream with the QUIC FIN, "
        "then STOP_SENDING with the code's QUIC code; never RESET_STREAM",
        ("no_auto_fin",),
        [
            {
                "send_batch": [
                    {
                        "type": "DATA",
                        "flags": ["SYN"],
                        "stream_id": 1,
                        "msg_seq": 1,
                        "ttl": 8,
                        "qos": "gold",
                        "payload": {"type": "agent.task", "content": {"prompt": "{task}"}},
                    },
                    {"type": "DATA", "flags": ["MORE"], "stream_id": 1, "msg_seq": 3},
                ]
            },
            {"expect_end": {"stream_id": 1, "code": "ESEQ_RETRY"}, "within_ms": 2500},
            {"expect_stop_sending": {"stream_id": 1, "code": "ESEQ_RETRY"}},
            {"still_serves": ["ATP-QUIC-006"]},
        ],
    ),
    (
        "binding.fin-with-final",
        ("ATP-QUIC-013",),
        "the QUIC FIN comes with the FINAL; a frame the client sends on that QUIC stream "
        "afterwards is read and discarded, and the session goes on",
        ("no_auto_fin",),
        [
            {"open": {"stream_id": 1}},
            {"expect_end": {"stream_id": 1, "how": "fin"}},
            {"expect_quic_fin": {"stream_id": 1}},
            {"quic_send": {"on": 1, "frame": _wu(1)}},
            {"expect_none": {"stream_id": 0, "type": "ERROR"}, "for_ms": 300},
            {"still_serves": ["ATP-QUIC-013"]},
        ],
    ),
    (
        "binding.stop-sending",
        ("ATP-QUIC-006", "ATP-ADAPT-009"),
        "STOP_SENDING on a running stream's QUIC stream is answered with RESET_STREAM and, "
        "the client's side then ended, taken as an RST: the adapter call is cancelled",
        ("adapter",),
        [
            {"open": {"stream_id": 1, "behaviour": "stall"}},
            {"adapter_event": {"event": "stream_start"}},
            {"quic_stop": {"stream_id": 1, "code": 0xFF}},
            {"quic_send": {"on": 1, "data": "", "fin": True}},
            {"expect_reset_stream": {"stream_id": 1}},
            {"adapter_event": {"event": "cancelled", "violated": ["ATP-QUIC-006"]}},
        ],
    ),
    (
        "binding.reset-stream",
        ("ATP-QUIC-006", "ATP-ADAPT-009"),
        "RESET_STREAM on a running stream's QUIC stream is an RST of that ATP stream: the "
        "adapter call is cancelled and the session goes on",
        ("adapter",),
        [
            {"open": {"stream_id": 1, "behaviour": "stall"}},
            {"adapter_event": {"event": "stream_start"}},
            {"quic_reset": {"stream_id": 1, "code": 0xFF}},
            {"adapter_event": {"event": "cancelled", "violated": ["ATP-QUIC-006"]}},
            {"still_serves": ["ATP-QUIC-006"]},
        ],
    ),
    (
        "binding.close-ends-streams",
        ("ATP-QUIC-014", "ATP-SESS-012"),
        "a CONNECTION_CLOSE 0x104 without ERROR ends the session's open streams: their "
        "adapter calls are cancelled",
        ("adapter",),
        [
            {"open": {"stream_id": 1, "behaviour": "stall"}},
            {"adapter_event": {"event": "stream_start"}},
            {"quic_close": {"code": 0x104}},
            {"adapter_event": {"event": "cancelled", "violated": ["ATP-QUIC-014"]}},
        ],
    ),
    (
        "binding.syn-order",
        ("ATP-QUIC-021", "ATP-STREAM-002"),
        "the SYN of ATP stream 3 on QUIC stream 8 arrives before that of stream 1 on QUIC "
        "stream 4: the router takes them in QUIC stream order and serves both",
        (),
        [{"quic_out_of_order": {}}],
    ),
    (
        "binding.reset-before-syn",
        ("ATP-QUIC-021",),
        "a QUIC stream reset before its first frame gives up its place: the SYN on the next "
        "QUIC stream is served",
        (),
        [{"quic_reset_first": {}}],
    ),
    (
        "binding.frame-size",
        ("ATP-QUIC-020", "ATP-LIMIT-001"),
        "a SYN whose ext + payload is max_frame_size + 1 is a stream error ETOOBIG with its "
        "body skipped; the session goes on",
        (),
        [{"quic_big": {}}],
    ),
    (
        "auth.valid",
        ("ATP-QUIC-008", "ATP-QUIC-009"),
        "CAPABILITIES with caps.auth Bearer <token> first authenticates: the router's "
        "CAPABILITIES does not echo caps.auth, and a stream is served",
        ("token",),
        [{"still_serves": ["ATP-QUIC-008"]}, {"quic_no_auth_echo": {}}],
    ),
    (
        "auth.first-frame-not-caps",
        ("ATP-QUIC-008", "ATP-QUIC-018"),
        "with auth configured, a heartbeat as the control stream's first frame closes the "
        "connection with 0x106 (ESEC)",
        ("token", "no_caps"),
        [{"send": _HB}, _close("ESEC", "ATP-QUIC-008", "ATP-QUIC-018")],
    ),
    (
        "auth.bad-token",
        ("ATP-QUIC-008", "ATP-QUIC-018", "ATP-SEC-001"),
        "caps.auth with the token's signature altered closes the connection with 0x106",
        ("token", "bad_token"),
        [_close("ESEC", "ATP-QUIC-008", "ATP-QUIC-018")],
    ),
    (
        "auth.syn-before-auth",
        ("ATP-QUIC-009",),
        "a SYN sent before the CAPABILITIES (whose token is bad) is never served: no frame "
        "for it, and the connection closes with 0x106",
        ("token", "no_caps"),
        [{"quic_syn_before_auth": {}}],
    ),
    (
        "auth.later-caps-ignored",
        ("ATP-QUIC-017",),
        "a later CAPABILITIES with a bad caps.auth is ignored: the session keeps serving",
        ("token",),
        [
            {
                "send": {
                    "type": "CAPABILITIES",
                    "stream_id": 0,
                    "caps": {"versions": [1], "auth": "Bearer not-a-token"},
                }
            },
            {"expect_none": {"stream_id": 0, "type": "ERROR"}, "for_ms": 300},
            {"still_serves": ["ATP-QUIC-017"]},
        ],
    ),
    (
        "auth.stream-refusal",
        ("ATP-QUIC-018", "ATP-SEC-004"),
        "with the limited token, a stream of another task type is refused ESEC on the "
        "stream, not by closing the connection",
        ("limited_token",),
        [
            {"open": {"stream_id": 1, "meta": {"task_type": "conformance-other"}}},
            {"expect_end": {"stream_id": 1, "code": "ESEC", "violated": ["ATP-QUIC-018"]}},
            {"still_serves": ["ATP-QUIC-018"]},
        ],
    ),
]
