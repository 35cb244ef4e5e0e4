"""An independent binary frame builder and parser: ``struct`` and ``cbor2``, nothing else.

Tests, benchmarks and the conformance suite check the wire format against the specification's
24-byte header table (DECISIONS D-001 / ATP-FRAME-001..004), not against our own encoder: so
this module never imports :mod:`atp_proto.frames`. It also builds what the real encoder refuses
to (a wrong version, a short body, a non-canonical ext), which hostile-peer tests need.

Layout of one frame (network byte order)::

    version u8 | type u8 | flags u8 | qos u8 | stream_id u32 | msg_seq u32
    frag_seq u16 | ttl u16 | ext_len u32 | payload_len u32 | ext (CBOR map) | payload (CBOR)
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

__all__ = [
    "HEADER",
    "T_DATA",
    "T_WINDOW_UPDATE",
    "T_CAPABILITIES",
    "T_BUDGET_UPDATE",
    "T_ERROR",
    "F_SYN",
    "F_ACK",
    "F_MORE",
    "F_FIN",
    "F_RST",
    "F_HB",
    "F_CONT",
    "Q_GOLD",
    "Q_SILVER",
    "Q_BRONZE",
    "WINDOW",
    "META",
    "RawFrame",
    "build_frame",
    "parse_frames",
    "syn_frame",
]

HEADER = struct.Struct("!BBBBIIHHII")  #: the 24-byte header
assert HEADER.size == 24

T_DATA, T_WINDOW_UPDATE, T_CAPABILITIES, T_BUDGET_UPDATE, T_ERROR = 0, 1, 2, 3, 4
F_SYN, F_ACK, F_MORE, F_FIN, F_RST, F_HB, F_CONT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
Q_GOLD, Q_SILVER, Q_BRONZE = 1, 2, 3


def build_frame(
    ftype: int,
    flags: int,
    stream_id: int,
    msg_seq: int = 0,
    *,
    qos: int = 0,
    frag_seq: int = 0,
    ttl: int = 0,
    ext: Mapping[str, Any] | None = None,
    payload: Any = None,
    raw_payload: bytes | None = None,
    version: int = 1,
) -> bytes:
    """One binary frame, built by hand from the 24-byte header table.

    ``payload`` is CBOR-encoded; ``raw_payload`` is sent as given (for malformed bodies).
    """
    ext_b = cbor2.dumps(dict(ext)) if ext else b""
    if raw_payload is not None:
        pay_b = raw_payload
    else:
        pay_b = cbor2.dumps(payload) if payload is not None else b""
    head = HEADER.pack(
        version, ftype, flags, qos, stream_id, msg_seq, frag_seq, ttl, len(ext_b), len(pay_b)
    )
    return head + ext_b + pay_b


@dataclass
class RawFrame:
    """One parsed frame, fields as on the wire (no validation beyond the lengths)."""

    version: int
    type: int
    flags: int
    qos: int
    stream_id: int
    msg_seq: int
    frag_seq: int
    ttl: int
    ext: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""
    size: int = 0  #: bytes on the wire: 24 + ext_len + payload_len (the credit cost)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    def body(self) -> Any:
        """The payload decoded from CBOR (None when empty)."""
        return cbor2.loads(self.payload) if self.payload else None


def parse_frames(data: bytes) -> list[RawFrame]:
    """Split one binary WebSocket message into frames.

    Raises:
        ValueError: a truncated header or body.
    """
    out: list[RawFrame] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER.size:
            raise ValueError("truncated header")
        v, t, fl, q, sid, seq, frag, ttl, ext_len, pay_len = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        if pos + ext_len + pay_len > len(data):
            raise ValueError("truncated body")
        ext = cbor2.loads(data[pos : pos + ext_len]) if ext_len else {}
        pos += ext_len
        payload = bytes(data[pos : pos + pay_len])
        pos += pay_len
        size = HEADER.size + ext_len + pay_len
        out.append(RawFrame(v, t, fl, q, sid, seq, frag, ttl, ext, payload, size))
    return out


#: the seed's SYN window and meta, shared by the end-to-end suites
WINDOW = {"max_parallel": 4, "max_tokens": 50000, "max_usd_micros": 1000000}
META: dict[str, Any] = {"task_type": "qa", "tool_permissions": [], "data_scope": ["no_secrets"]}


def syn_frame(
    sid: int = 1,
    prompt: str = "hello",
    adapters: list[str] | None = None,
    *,
    ttl: int = 8,
    **kw: Any,
) -> bytes:
    """A binary SYN in the seed's shape (gold lane, WINDOW, META) for ``adapters``
    (persona by default); ``ttl=0`` sends none. ``kw`` goes to :func:`build_frame`."""
    return build_frame(
        T_DATA,
        F_SYN,
        sid,
        1,
        qos=Q_GOLD,
        ttl=ttl,
        ext={"window": WINDOW, "meta": dict(META, adapters=adapters or ["persona"])},
        payload={"type": "agent.task", "content": {"prompt": prompt}},
        **kw,
    )
