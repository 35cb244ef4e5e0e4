"""Wire pieces of an independent ATP/1 router, written from spec/atp-v1.md alone.

A strict CBOR checker/decoder (spec §3, ATP-FRAME-005/006/024), the binary header
(§3), the JSON text mapping (§13.3) and the frame model shared by both encodings.
Nothing here imports the reference implementation.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2

HEADER = struct.Struct("!BBBBIIHHII")
HEADER_LEN = 24

DATA, WINDOW_UPDATE, CAPABILITIES, BUDGET_UPDATE, ERROR = 0, 1, 2, 3, 4
TYPE_NAMES = {
    "DATA": DATA,
    "WINDOW_UPDATE": WINDOW_UPDATE,
    "CAPABILITIES": CAPABILITIES,
    "BUDGET_UPDATE": BUDGET_UPDATE,
    "ERROR": ERROR,
}
TYPE_BY_NUM = {v: k for k, v in TYPE_NAMES.items()}

SYN, ACK, MORE, FIN, RST, HB, CONT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
FLAG_NAMES = [
    ("SYN", SYN),
    ("ACK", ACK),
    ("MORE", MORE),
    ("FIN", FIN),
    ("RST", RST),
    ("HB", HB),
    ("CONT", CONT),
]
FLAG_BY_NAME = dict(FLAG_NAMES)
QOS_NAMES = {"gold": 1, "silver": 2, "bronze": 3}
QOS_BY_NUM = {v: k for k, v in QOS_NAMES.items()}

RESERVED_KEYS = frozenset(
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
MAX_DEPTH = 16
U31 = 2**31 - 1
U32 = 2**32 - 1
U64 = 2**64 - 1

# §11: the WebSocket close code of each error code.
CLOSE_CODES = {
    "EPROTO": 1002,
    "ESEQ_RETRY": 4001,
    "EWINDOW": 4002,
    "EBUDGET": 4003,
    "ETIMEOUT": 4004,
    "EAGENTDOWN": 4005,
    "ESEC": 1008,
    "ECONSENSUS": 4007,
    "EPREEMPT": 4008,
    "EDRAINING": 1001,
    "EWINDOW_AGENT": 4010,
    "ETOOBIG": 1009,
    "EINTERNAL": 1011,
}


# §11: the QUIC application error code of each error code (0x100 + its row in the table).
QUIC_CODES = {
    "EPROTO": 0x100,
    "ESEQ_RETRY": 0x101,
    "EWINDOW": 0x102,
    "EBUDGET": 0x103,
    "ETIMEOUT": 0x104,
    "EAGENTDOWN": 0x105,
    "ESEC": 0x106,
    "ECONSENSUS": 0x107,
    "EPREEMPT": 0x108,
    "EDRAINING": 0x109,
    "EWINDOW_AGENT": 0x10A,
    "ETOOBIG": 0x10B,
    "EINTERNAL": 0x10C,
}


class Violation(Exception):
    """A peer's violation: code, and whether it is connection-level."""

    def __init__(self, code: str, message: str, connection: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.connection = connection


class CborError(Exception):
    pass


def _u(buf: bytes, pos: int, n: int) -> tuple[int, int]:
    if pos + n > len(buf):
        raise CborError("truncated CBOR")
    return int.from_bytes(buf[pos : pos + n], "big"), pos + n


def _arg(buf: bytes, pos: int, info: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    if info == 24:
        return _u(buf, pos, 1)
    if info == 25:
        return _u(buf, pos, 2)
    if info == 26:
        return _u(buf, pos, 4)
    if info == 27:
        return _u(buf, pos, 8)
    if info == 31:
        raise CborError("indefinite-length item")
    raise CborError("reserved additional information")


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return ("list", tuple(_hashable(x) for x in v))
    if isinstance(v, dict):
        return ("map", tuple((_hashable(k), _hashable(x)) for k, x in v.items()))
    return (type(v).__name__, v)


def cbor_item(buf: bytes, pos: int, depth: int, strict_json: bool) -> tuple[Any, int]:
    """Decode one CBOR item strictly. strict_json: the JSON data model of ATP-FRAME-006."""
    if depth > MAX_DEPTH and strict_json:
        raise CborError("ext nested deeper than 16")
    if depth > 512:
        raise CborError("CBOR nested too deep")
    if pos >= len(buf):
        raise CborError("truncated CBOR")
    ib = buf[pos]
    pos += 1
    major, info = ib >> 5, ib & 0x1F
    if major == 0:
        return _arg(buf, pos, info)
    if major == 1:
        n, pos = _arg(buf, pos, info)
        return -1 - n, pos
    if major in (2, 3):
        n, pos = _arg(buf, pos, info)
        if pos + n > len(buf):
            raise CborError("truncated string")
        raw = buf[pos : pos + n]
        pos += n
        if major == 2:
            return bytes(raw), pos
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise CborError("text string not UTF-8") from None
    if major == 4:
        n, pos = _arg(buf, pos, info)
        out = []
        for _ in range(n):
            v, pos = cbor_item(buf, pos, depth + 1, strict_json)
            out.append(v)
        return out, pos
    if major == 5:
        n, pos = _arg(buf, pos, info)
        m: dict[Any, Any] = {}
        seen: set[Any] = set()
        for _ in range(n):
            k, pos = cbor_item(buf, pos, depth + 1, strict_json)
            if strict_json and not isinstance(k, str):
                raise CborError("map key not text")
            hk = _hashable(k)
            if hk in seen:
                raise CborError("duplicate map key")
            seen.add(hk)
            v, pos = cbor_item(buf, pos, depth + 1, strict_json)
            m[k if not isinstance(k, (list, dict)) else hk] = v
        return m, pos
    if major == 6:
        raise CborError("CBOR tag")
    # major 7
    if info == 20:
        return False, pos
    if info == 21:
        return True, pos
    if info == 22:
        return None, pos
    if info in (25, 26, 27):
        size = {25: 2, 26: 4, 27: 8}[info]
        if pos + size > len(buf):
            raise CborError("truncated float")
        fmt = {2: "!e", 4: "!f", 8: "!d"}[size]
        (f,) = struct.unpack(fmt, buf[pos : pos + size])
        if strict_json and not math.isfinite(f):
            raise CborError("NaN or infinite float")
        return f, pos + size
    if info == 31:
        raise CborError("unexpected break")
    if strict_json:
        raise CborError("simple value outside the JSON data model")
    if info == 24:
        _, pos = _u(buf, pos, 1)
        return None, pos
    return None, pos


def decode_ext(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    v, pos = cbor_item(raw, 0, 1, True)
    if not isinstance(v, dict):
        raise CborError("ext is not a map")
    if pos != len(raw):
        raise CborError("trailing bytes after ext")
    return v


def check_cbor_payload(raw: bytes) -> Any:
    """ATP-FRAME-024: exactly one well-formed item, no tag / indefinite / duplicate key."""
    v, pos = cbor_item(raw, 0, 1, False)
    if pos != len(raw):
        raise CborError("trailing bytes after the payload's CBOR item")
    return v


@dataclass
class Frame:
    type: int
    flags: int = 0
    qos: int = 0
    stream_id: int = 0
    msg_seq: int = 0
    frag_seq: int = 0
    ttl: int = 0
    ext: dict[str, Any] = field(default_factory=dict)
    ext_len: int = 0
    payload: bytes = b""
    cost: int = 0
    text: bool = False
    alias: str | None = None


def encode_binary(f: Frame) -> bytes:
    ext = cbor2.dumps(f.ext) if f.ext else b""
    return (
        HEADER.pack(
            1,
            f.type,
            f.flags,
            f.qos,
            f.stream_id,
            f.msg_seq,
            f.frag_seq,
            f.ttl,
            len(ext),
            len(f.payload),
        )
        + ext
        + f.payload
    )


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


_NO_JSON = object()


def payload_json(raw: bytes) -> Any:
    """The payload as a JSON value, or _NO_JSON when it must travel as payload_b64."""
    if not raw:
        return None
    try:
        v = check_cbor_payload(raw)
    except CborError:
        return _NO_JSON

    def ok(x: Any) -> bool:
        if x is None or isinstance(x, bytes):
            return False
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if isinstance(x, list):
            return all(ok(i) for i in x)
        if isinstance(x, dict):
            return all(isinstance(k, str) and ok(i) for k, i in x.items())
        return isinstance(x, (str, int, float, bool))

    if not ok(v) or cbor2.dumps(v) != raw:
        return _NO_JSON
    return v


def encode_text(
    f: Frame, alias: str | None, session_id: str | None, whole_payload_json: bool = True
) -> str:
    obj: dict[str, Any] = {"v": 1}
    if f.type != DATA:
        obj["type"] = TYPE_BY_NUM[f.type]
    obj["stream_id"] = alias if alias is not None else f.stream_id
    if f.msg_seq:
        obj["msg_seq"] = f.msg_seq
    if f.frag_seq:
        obj["frag_seq"] = f.frag_seq
    obj["flags"] = [n for n, b in FLAG_NAMES if f.flags & b]
    if f.qos:
        obj["qos"] = QOS_BY_NUM[f.qos]
    if session_id is not None:
        obj["session_id"] = session_id
    for k, v in f.ext.items():
        obj[k] = _jsonable(v)
    if f.payload:
        pj = payload_json(f.payload) if whole_payload_json else _NO_JSON
        if pj is _NO_JSON:
            obj["payload_b64"] = base64.b64encode(f.payload).decode("ascii")
        else:
            obj["payload"] = pj
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --- JSON text mapping (§13.3) -------------------------------------------------


class _JFloat(float):
    """A JSON number written with a fraction or an exponent."""


class _JObj(dict):  # type: ignore[type-arg]
    dups: set[str]


class TextParse(Exception):
    def __init__(self, message: str, unknown_stream: bool) -> None:
        super().__init__(message)
        self.message = message
        self.unknown_stream = unknown_stream


def _pairs(pairs: list[tuple[str, Any]]) -> _JObj:
    d = _JObj()
    d.dups = set()
    for k, v in pairs:
        if k in d:
            d.dups.add(k)
        d[k] = v
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _float(s: str) -> _JFloat:
    return _JFloat(float(s))


def parse_json_text(text: str) -> tuple[Any, str | None]:
    """Parse strictly; returns (object, problem) where problem says what is malformed
    in a way that still lets the stream be identified. Raises TextParse for a text
    that is not JSON at all."""
    try:
        obj = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_no_constant, parse_float=_float
        )
    except (ValueError, RecursionError) as e:
        raise TextParse(f"text message is not JSON: {e}", True) from None
    problem: list[str] = []

    def walk(v: Any, depth: int) -> Any:
        if depth > 600:
            raise TextParse("JSON nested too deep", True)
        if isinstance(v, _JObj):
            if v.dups and depth > 0:
                problem.append(f"duplicate key {sorted(v.dups)[0]!r}")
            out = {}
            for k, x in v.items():
                _text_ok(k)
                out[k] = walk(x, depth + 1)
            return out
        if isinstance(v, list):
            return [walk(x, depth + 1) for x in v]
        if isinstance(v, str):
            _text_ok(v)
            return v
        if isinstance(v, _JFloat):
            if not math.isfinite(v):
                problem.append("a number that is not finite")
            return v
        if isinstance(v, int) and not isinstance(v, bool) and not -(2**64) <= v <= U64:
            problem.append("an integer out of range")
        return v

    def _text_ok(s: str) -> None:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            problem.append("a lone surrogate in a string")

    if not isinstance(obj, _JObj):
        raise TextParse("text message is not a JSON object", True)
    top_dups = obj.dups
    if top_dups & {"v", "type", "stream_id", "flags"}:
        raise TextParse(f"duplicate header key {sorted(top_dups)[0]!r}", True)
    if top_dups:
        problem.append(f"duplicate key {sorted(top_dups)[0]!r}")
    # the alias must be well-formed text to identify the stream
    sid = obj.get("stream_id")
    if isinstance(sid, str):
        try:
            sid.encode("utf-8")
        except UnicodeEncodeError:
            raise TextParse("malformed alias", True) from None
    result = walk(obj, 0)
    return result, (problem[0] if problem else None)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and not isinstance(v, _JFloat)


def _plain(v: Any, depth: int) -> Any:
    """JSON value -> ext value (depth: the ext map is 1)."""
    if depth > MAX_DEPTH:
        raise ValueError("ext nested deeper than 16")
    if isinstance(v, dict):
        return {k: _plain(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, _JFloat):
        return float(v)
    return v


@dataclass
class TextHeader:
    """What identifies a text frame's stream, read before the rest."""

    ignore: bool
    type: int
    stream_id: int | None
    alias: str | None


def text_header(obj: dict[str, Any]) -> TextHeader:
    t = obj.get("type", "DATA")
    if isinstance(t, str):
        if t not in TYPE_NAMES:
            return TextHeader(True, -1, None, None)
        ftype = TYPE_NAMES[t]
    elif _is_int(t):
        if not 0 <= t <= 255:
            raise TextParse("type out of range", True)
        if t not in TYPE_BY_NUM:
            return TextHeader(True, -1, None, None)
        ftype = t
    else:
        raise TextParse("type is neither a name nor a number", True)
    sid = obj.get("stream_id", 0)
    if isinstance(sid, str):
        if not 1 <= len(sid) <= 128:
            raise TextParse("malformed alias", True)
        return TextHeader(False, ftype, None, sid)
    if _is_int(sid) and 0 <= sid <= U31:
        return TextHeader(False, ftype, sid, None)
    raise TextParse("stream_id is not a stream id or an alias", True)


def text_flags(obj: dict[str, Any]) -> int | None:
    """The flag bits, or None when `flags` is malformed."""
    fl = obj.get("flags", [])
    if not isinstance(fl, list):
        return None
    bits = 0
    for n in fl:
        if not isinstance(n, str):
            return None
        bits |= FLAG_BY_NAME.get(n, 0)
    return bits


def text_frame(obj: dict[str, Any], hdr: TextHeader, stream_id: int, cost: int) -> Frame:
    """The rest of a text frame; raises ValueError for a malformed field."""
    v = obj.get("v", 1)
    if not _is_int(v):
        raise ValueError("v is not an integer")
    if v != 1:
        raise Violation("EPROTO", f"unsupported version {v}", connection=True)
    flags = text_flags(obj)
    if flags is None:
        raise ValueError("flags is not an array of names")
    vals = {}
    for key, top in (("msg_seq", U32), ("frag_seq", 0xFFFF), ("ttl", 0xFFFF)):
        x = obj.get(key, 0)
        if not _is_int(x) or not 0 <= x <= top:
            raise ValueError(f"{key} is not an integer in range")
        vals[key] = x
    q = obj.get("qos")
    if q is None:  # absent or null: unspecified (ATP-JSON-018)
        qos = 0
    elif isinstance(q, str) and q in QOS_NAMES:
        qos = QOS_NAMES[q]
    else:
        raise ValueError("qos is not gold, silver or bronze")
    if "payload" in obj and "payload_b64" in obj:
        raise ValueError("both payload and payload_b64")
    payload = b""
    if "payload_b64" in obj:
        b = obj["payload_b64"]
        if not isinstance(b, str):
            raise ValueError("payload_b64 is not text")
        try:
            payload = base64.b64decode(b, validate=True)
        except ValueError:
            raise ValueError("payload_b64 is not base64") from None
    elif obj.get("payload") is not None:
        payload = cbor2.dumps(_plain(obj["payload"], -(10**6)))
    ext = {}
    for k, x in obj.items():
        if k in RESERVED_KEYS:
            continue
        ext[k] = _plain(x, 2)
    ext_len = len(cbor2.dumps(ext)) if ext else 0
    return Frame(
        type=hdr.type,
        flags=flags,
        qos=qos,
        stream_id=stream_id,
        msg_seq=vals["msg_seq"],
        frag_seq=vals["frag_seq"],
        ttl=vals["ttl"],
        ext=ext,
        ext_len=ext_len,
        payload=payload,
        cost=cost,
        text=True,
        alias=hdr.alias,
    )
