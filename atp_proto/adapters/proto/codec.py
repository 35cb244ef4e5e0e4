"""Hand-written fast codec for the ``atp.adapter.v1`` messages (NOT generated).

The generated betterproto classes (``atp_proto.adapters.proto.atp.adapter.v1``) are the
schema and the reference implementation; they cost ~35 µs to encode and ~65 µs to parse a
:class:`StreamChunk` on our machines, which would cap a stream at ~15k chunks/s. This
module encodes and decodes the same wire format directly to and from the ATP dataclasses
(:mod:`atp_proto.adapters._base`) in a few microseconds. ``tests/adapters/test_proto.py``
checks, with property tests, that it agrees with betterproto byte for byte (encoding) and
value for value (decoding, including unknown fields and any field order).

Decoders follow protobuf rules: fields in any order, last value wins, unknown fields
skipped, missing fields are zero values. Malformed input raises :class:`DecodeError`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from atp_proto.adapters._base import Chunk, CostEstimate, Health, TaskRequest

__all__ = [
    "STATUS_NAMES",
    "STATUS_VALUES",
    "DecodeError",
    "decode_chunk",
    "decode_estimate",
    "decode_health",
    "decode_retry_info",
    "decode_task_request",
    "encode_chunk",
    "encode_estimate",
    "encode_health",
    "encode_retry_status",
    "encode_task_request",
    "json_text",
]

_DOUBLE = struct.Struct("<d")

#: HealthReply.status enum values <-> the status strings of :class:`Health`.
STATUS_VALUES: dict[str, int] = {"READY": 1, "BUSY": 2, "PAUSE": 3, "DRAINING": 4, "DOWN": 5}
STATUS_NAMES: dict[int, str] = {v: k for k, v in STATUS_VALUES.items()}


class DecodeError(ValueError):
    """The bytes are not a valid message of the expected type."""


# --------------------------------------------------------------------------- primitives


def _varint(value: int) -> bytes:
    if value < 0:  # int32/int64 negatives: 10-byte two's complement
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A varint of at most 10 bytes whose value fits 64 bits (protobuf encoding): a longer
    one, or a 10th byte above 1 (a value of 2**64 or more), is malformed."""
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = data[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise DecodeError("varint over 64 bits")
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _string(field: int, value: str) -> bytes:
    if not value:
        return b""
    raw = value.encode()
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _uint(field: int, value: int) -> bytes:
    if not value:
        return b""
    return _varint(field << 3) + _varint(value)


def _double(field: int, value: float) -> bytes:
    if not value:  # proto3: 0.0 is not sent (betterproto does the same)
        return b""
    return _varint(field << 3 | 1) + _DOUBLE.pack(value)


def _fields(data: bytes) -> dict[int, Any]:
    """Parse one message level: field number -> last value (int, float bits, or bytes)."""
    out: dict[int, Any] = {}
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise DecodeError("field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            value = data[pos : pos + 8]
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            if pos + n > end:
                raise DecodeError("truncated length-delimited field")
            value = data[pos : pos + n]
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            value = data[pos : pos + 4]
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        out[field] = (wire, value)
    return out


def _get_str(f: dict[int, Any], n: int) -> str:
    item = f.get(n)
    if item is None:
        return ""
    if item[0] != 2:
        raise DecodeError(f"field {n}: expected a string")
    try:
        return bytes(item[1]).decode()
    except UnicodeDecodeError:
        raise DecodeError(f"field {n}: invalid UTF-8") from None


def _get_int(f: dict[int, Any], n: int, *, signed32: bool = False) -> int:
    item = f.get(n)
    if item is None:
        return 0
    if item[0] != 0:
        raise DecodeError(f"field {n}: expected a varint")
    value: int = item[1]
    if signed32:
        value &= 0xFFFFFFFF
        if value >= 1 << 31:
            value -= 1 << 32
    return value


def _get_double(f: dict[int, Any], n: int) -> float:
    item = f.get(n)
    if item is None:
        return 0.0
    if item[0] != 1:
        raise DecodeError(f"field {n}: expected a double")
    value: float = _DOUBLE.unpack(item[1])[0]
    return value


# --------------------------------------------------------------------------- messages


#: json.dumps(value, separators=(",", ":"), ensure_ascii=False) without building an
#: encoder per call (dumps makes one from the same arguments and calls its encode)
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _json_text(value: Mapping[str, Any]) -> str:
    return _encode_json(dict(value)) if value else ""


#: the ``content_json`` / ``meta_json`` text the router sends for a mapping
json_text = _json_text


def content_json(req: TaskRequest) -> bytes:
    """The UTF-8 ``content_json`` the router sends for ``req``: encoded once per request
    (kept on it), however many calls and readers need it."""
    kept = req.encoded()
    raw = kept.content_json
    if raw is None:
        raw = kept.content_json = _json_text(req.content).encode()
    return raw


def _bytes(field: int, raw: bytes) -> bytes:
    if not raw:
        return b""
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise DecodeError(f"{what} is not valid JSON") from None
    except RecursionError:  # untrusted input (ATP-SEC-012): nesting deeper than Python's stack
        raise DecodeError(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise DecodeError(f"{what} must be a JSON object")
    return value


def encode_task_request(req: TaskRequest) -> bytes:
    """An ``EstimateRequest`` or ``StreamRequest`` (both are ``{Task task = 1}``):
    encoded once per request (kept on it; its ``deadline_ms`` is not in it), however
    many calls (Estimate, Stream, retries, failovers) send it."""
    kept = req.encoded()
    pb = kept.task
    if pb is not None:
        return pb
    task = b"".join(
        (
            _string(1, req.task_type),
            _string(2, req.prompt),
            _bytes(3, content_json(req)),
            # proto3 `optional`: present (even when 0) iff set
            b"" if req.max_tokens is None else _varint(4 << 3) + _varint(req.max_tokens),
            _string(5, _json_text(req.meta)),
            _string(6, req.request_id),
        )
    )
    pb = kept.task = _varint(1 << 3 | 2) + _varint(len(task)) + task
    return pb


def decode_task_request(data: bytes, *, deadline_ms: int | None = None) -> TaskRequest:
    """Parse an ``EstimateRequest`` / ``StreamRequest`` into a :class:`TaskRequest`.

    Raises:
        DecodeError: malformed protobuf, or content_json / meta_json not a JSON object.
    """
    outer = _fields(data)
    item = outer.get(1)
    if item is not None and item[0] != 2:
        raise DecodeError("field 1: expected a Task message")
    f = _fields(bytes(item[1])) if item is not None else {}
    return TaskRequest(
        task_type=_get_str(f, 1),
        prompt=_get_str(f, 2),
        content=_json_object(_get_str(f, 3), "content_json"),
        max_tokens=_get_int(f, 4, signed32=True) if 4 in f else None,
        meta=_json_object(_get_str(f, 5), "meta_json"),
        request_id=_get_str(f, 6),
        deadline_ms=deadline_ms,
    )


def encode_chunk(chunk: Chunk) -> bytes:
    return b"".join(
        (
            _string(1, chunk.content),
            _double(2, chunk.confidence),
            _uint(3, chunk.tokens),
            _uint(4, chunk.usd_micros),
            b"\x28\x01" if chunk.final else b"",
            _string(6, chunk.finish_reason),
        )
    )


def decode_chunk(data: bytes) -> Chunk:
    # The hot message of the adapter plane (one per streamed chunk): parsed in one pass
    # into locals instead of through _fields; same rules (any order, last value wins,
    # unknown fields skipped), and a known field of the wrong wire type is an error.
    content = reason = b""
    confidence = 0.0
    tokens = usd = final = 0
    pos = 0
    end = len(data)
    while pos < end:
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(data, pos)
        field = key >> 3
        wire = key & 7
        if wire == 2:
            if pos < end and data[pos] < 0x80:
                n = data[pos]
                pos += 1
            else:
                n, pos = _read_varint(data, pos)
            stop = pos + n
            if stop > end:
                raise DecodeError("truncated length-delimited field")
            if field == 1:
                content = data[pos:stop]
            elif field == 6:
                reason = data[pos:stop]
            elif 2 <= field <= 5:
                raise DecodeError(f"field {field}: wrong wire type")
            pos = stop
        elif wire == 0:
            if pos < end and data[pos] < 0x80:
                value = data[pos]
                pos += 1
            else:
                value, pos = _read_varint(data, pos)
            if field == 3:
                tokens = value
            elif field == 4:
                usd = value
            elif field == 5:
                final = value
            elif field in {1, 2, 6}:
                raise DecodeError(f"field {field}: wrong wire type")
        elif wire == 1:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            if field == 2:
                confidence = _DOUBLE.unpack_from(data, pos)[0]
            elif 1 <= field <= 6:
                raise DecodeError(f"field {field}: wrong wire type")
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            if 1 <= field <= 6:
                raise DecodeError(f"field {field}: wrong wire type")
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if field == 0:
            raise DecodeError("field number 0")
    try:
        text = content.decode() if content else ""
        finish = reason.decode() if reason else ""
    except UnicodeDecodeError:
        raise DecodeError("invalid UTF-8 in a string field") from None
    return Chunk(text, confidence, tokens & 0xFFFFFFFF, usd, bool(final), finish)


def encode_estimate(est: CostEstimate) -> bytes:
    return b"".join(
        (
            _uint(1, est.in_tokens),
            _uint(2, est.out_tokens),
            _uint(3, est.usd_micros),
            _double(4, est.latency_p95_ms),
            _double(5, est.variance),
            _double(6, est.confidence),
            _uint(7, est.max_age_ms),  # 0 (the default) is not sent: old peers unchanged
        )
    )


def decode_estimate(data: bytes) -> CostEstimate:
    f = _fields(data)
    return CostEstimate(
        in_tokens=_get_int(f, 1) & 0xFFFFFFFF,
        out_tokens=_get_int(f, 2) & 0xFFFFFFFF,
        usd_micros=_get_int(f, 3),
        latency_p95_ms=_get_double(f, 4),
        variance=_get_double(f, 5),
        confidence=_get_double(f, 6),
        max_age_ms=_get_int(f, 7) & 0xFFFFFFFF,
    )


def encode_health(h: Health) -> bytes:
    return b"".join(
        (
            _uint(1, STATUS_VALUES.get(h.status, 0)),
            _double(2, h.p95_ms),
            _double(3, h.error_rate),
            _uint(4, h.capacity),
        )
    )


def decode_health(data: bytes) -> Health:
    f = _fields(data)
    return Health(
        status=STATUS_NAMES.get(_get_int(f, 1), "DOWN"),
        p95_ms=_get_double(f, 2),
        error_rate=_get_double(f, 3),
        capacity=_get_int(f, 4) & 0xFFFFFFFF,
    )


# --------------------------------------------------------------------------- rich status

#: ``Any.type_url`` of ``google.rpc.RetryInfo`` (google/rpc/error_details.proto).
RETRY_INFO_URL = "type.googleapis.com/google.rpc.RetryInfo"


def encode_retry_status(status: int, message: str, retry_after_ms: int) -> bytes:
    """A ``google.rpc.Status`` (the ``grpc-status-details-bin`` trailer) whose details
    hold one ``google.rpc.RetryInfo`` with ``retry_delay`` = ``retry_after_ms``: the
    gRPC richer error model's retry hint, which any gRPC client library can read."""
    ms = max(0, retry_after_ms)
    duration = _uint(1, ms // 1000) + _uint(2, (ms % 1000) * 1_000_000)
    retry_info = _varint(1 << 3 | 2) + _varint(len(duration)) + duration
    url = RETRY_INFO_URL.encode()
    any_ = _varint(1 << 3 | 2) + _varint(len(url)) + url
    any_ += _varint(2 << 3 | 2) + _varint(len(retry_info)) + retry_info
    return b"".join(
        (
            _uint(1, status),
            _string(2, message),
            _varint(3 << 3 | 2) + _varint(len(any_)) + any_,
        )
    )


def decode_retry_info(data: bytes) -> int | None:
    """The retry delay, in milliseconds, of the ``RetryInfo`` in a ``google.rpc.Status``
    (None when there is none). Bounded: at most 2**31 - 1 ms is returned.

    Raises:
        DecodeError: malformed protobuf.
    """
    pos, end = 0, len(data)
    while pos < end:  # Status.details is repeated: walk every field
        key, pos = _read_varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
            continue
        if wire != 2:
            raise DecodeError(f"unsupported wire type {wire} in google.rpc.Status")
        n, pos = _read_varint(data, pos)
        if pos + n > end:
            raise DecodeError("truncated google.rpc.Status")
        value = data[pos : pos + n]
        pos += n
        if key >> 3 != 3:
            continue
        any_ = _fields(value)
        if _get_str(any_, 1) != RETRY_INFO_URL or 2 not in any_ or any_[2][0] != 2:
            continue
        info = _fields(bytes(any_[2][1]))
        if 1 not in info or info[1][0] != 2:
            return None
        duration = _fields(bytes(info[1][1]))
        seconds = _get_int(duration, 1)
        nanos = _get_int(duration, 2, signed32=True)
        if seconds >= 1 << 63 or nanos < 0:  # a negative delay means none
            return None
        return min((1 << 31) - 1, seconds * 1000 + (nanos + 999_999) // 1_000_000)
    return None
