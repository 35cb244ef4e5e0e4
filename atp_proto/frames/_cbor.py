"""Strict CBOR for ext maps and conventional payloads (ATP-FRAME-005/006).

What the spec allows in CBOR is the JSON data model plus byte strings: text-keyed maps,
arrays, text and byte strings, integers, finite floats (ext), true/false/null. No tags
(cbor2 would otherwise build datetimes, bignums, shared references...), no indefinite
lengths, no duplicate keys, nothing nested deeper than ``max_depth``, and nothing after
the one item. The binary codec (``_codec``), the frame model (``_frame``) and the JSON
mapping (``_json``) all decode through here, so each rule is written once, and this module
depends only on ``_types`` and ``_errors`` (it used to live in ``_codec``, which made a
circle with ``_frame``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any, Final, NoReturn

import cbor2

from ._errors import FrameDecodeError, LocalProtocolError
from ._types import DEFAULT_LIMITS, ErrorCode, Limits, Payload

#: ext keys that would shadow a header field in the JSON text mapping (ATP-JSON-015): a
#: sender never puts them in ext, a receiver refuses a frame whose ext has one.
RESERVED_EXT_KEYS: Final = frozenset(
    {"v", "type", "stream_id", "msg_seq", "frag_seq", "flags", "qos", "ttl"}
    | {"payload", "payload_b64"}
)


def reserved_key(ext: Mapping[str, Any]) -> str | None:
    """The first ext key that names a JSON header field, or None (ATP-JSON-015)."""
    if RESERVED_EXT_KEYS.isdisjoint(ext):
        return None
    return next(k for k in ext if k in RESERVED_EXT_KEYS)


def encode_ext(ext: Mapping[str, Any]) -> bytes:
    """CBOR-encode an ext map (empty map encodes to zero bytes); an :class:`EncodedExt`
    gives the bytes it was encoded to once.

    Raises:
        LocalProtocolError: a value is not CBOR-encodable, or a key is reserved
            (ATP-JSON-015).
    """
    if ext.__class__ is EncodedExt:
        return ext.cbor
    if not ext:
        return b""
    bad = reserved_key(ext)
    if bad is not None:
        raise LocalProtocolError(
            ErrorCode.EPROTO, f'ext key "{bad}" is reserved for the JSON header (ATP-JSON-015)'
        )
    try:
        return cbor2.dumps(dict(ext) if not isinstance(ext, dict) else ext)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise LocalProtocolError(ErrorCode.EPROTO, f"ext cannot be encoded as CBOR: {exc}") from exc


def _read_only() -> NoReturn:
    raise TypeError("an EncodedExt is read-only: build a new one")


class EncodedExt(dict[str, Any]):
    """An ext map CBOR-encoded once, on construction (:attr:`cbor`), for a message whose
    ext is large and measured before it is sent (the router's FINAL telemetry: its size
    decides what it carries, ATP-FLOW-014). The sending path and the frame encoder take
    the bytes instead of encoding the map again (they did twice per message). It refuses
    changes to itself; values nested in it must not be changed either once it is built.

    Raises:
        LocalProtocolError: as :func:`encode_ext`.
    """

    __slots__ = ("cbor",)

    def __init__(self, ext: Mapping[str, Any]) -> None:
        super().__init__(ext)
        self.cbor: bytes = encode_ext(dict(self))

    def __setitem__(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()

    def __delitem__(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()

    def __ior__(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[misc]
        _read_only()

    def clear(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()

    def pop(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()

    def popitem(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()

    def setdefault(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()


_JSON_SCALARS: Final = (str, int, float, bool, type(None), bytes)


def check_value(value: object, depth: int, max_depth: int, *, finite: bool = False) -> None:
    """Reject anything outside the JSON data model plus byte strings (no CBOR tags).

    With ``finite`` (ext, ATP-FRAME-006) NaN and the infinities are refused too: JSON
    has no such numbers.

    One pass over the decoded value. The decoders hand out exact built-in types, so the
    common members of a container (text, integers, byte strings) are checked inline by
    type identity, without a call per value (measured: half the time of the recursive
    walk on a 200-byte payload).
    """
    if depth > max_depth:
        raise ValueError(f"nesting deeper than {max_depth}")
    t = type(value)
    if t is dict:
        inline = depth < max_depth  # a member one level down is still within the limit
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str and not isinstance(k, str):
                raise ValueError(f"map key {k!r} is not a text string")
            tv = type(v)
            if inline and (tv is str or tv is int or tv is bytes or tv is bool or v is None):
                continue
            check_value(v, depth + 1, max_depth, finite=finite)
    elif t is list:
        inline = depth < max_depth
        for v in value:  # type: ignore[attr-defined]
            tv = type(v)
            if inline and (tv is str or tv is int or tv is bytes or tv is bool or v is None):
                continue
            check_value(v, depth + 1, max_depth, finite=finite)
    elif t is float or isinstance(value, float):
        if finite and not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"{value} is not a finite number")
    elif isinstance(value, dict | list):
        check_value(
            dict(value) if isinstance(value, dict) else list(value), depth, max_depth, finite=finite
        )
    elif not isinstance(value, _JSON_SCALARS):
        raise ValueError(f"unsupported CBOR item {type(value).__name__} (tags are not allowed)")


def _refuse_tag(*_: object) -> Any:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed")


class _RefuseEveryTag(dict[int, Any]):
    """``semantic_decoders`` that refuses every tag, including those cbor2 would decode
    silently to a JSON-model value (2/3 bignums, 28/29 sharing, 256 stringrefs, 55799)."""

    def __missing__(self, tag: int) -> Any:
        return _refuse_tag


_NO_TAGS: Final = _RefuseEveryTag()


#: one strict decoder per depth limit, reused: building a CBORDecoder costs more than
#: decoding a 200-byte payload with it (measured 1.4 of 2.6 µs). The core is not re-entered
#: while a decode runs (the only hook raises), so one decoder per process is safe.
_DECODERS: dict[int, cbor2.CBORDecoder] = {}


def _decoder(max_depth: int) -> cbor2.CBORDecoder:
    dec = _DECODERS.get(max_depth)
    if dec is None:
        dec = _DECODERS[max_depth] = cbor2.CBORDecoder(
            io.BytesIO(b""),
            max_depth=max_depth + 1,
            allow_duplicate_keys=False,  # ATP-FRAME-006, in C
            allow_indefinite=False,
            tag_hook=_refuse_tag,  # ATP-FRAME-006: no tags at all
            semantic_decoders=_NO_TAGS,
        )
    return dec


def strict_cbor(data: Payload, max_depth: int) -> Any:
    """One CBOR item, all of ``data``, decoded with the rules cbor2 enforces in C (tags,
    indefinite lengths, duplicate keys, depth); :func:`check_value` does the rest."""
    bio = io.BytesIO(data)  # a copy: the decoder never pins the caller's buffer
    dec = _DECODERS.get(max_depth) or _decoder(max_depth)
    dec.fp = bio
    obj = dec.decode()
    if bio.tell() != len(data):
        raise ValueError(f"{len(data) - bio.tell()} bytes of trailing data after the CBOR item")
    return obj


def decode_ext(
    data: Payload, stream_id: int = 0, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Decode and validate an ext map.

    Raises:
        FrameDecodeError: EPROTO, for ``stream_id`` (0 means connection-level).
    """
    try:
        obj = strict_cbor(data, limits.max_depth)
        if not isinstance(obj, dict):
            raise ValueError(f"ext must be a CBOR map, got {type(obj).__name__}")
        check_value(obj, 1, limits.max_depth, finite=True)
        bad = reserved_key(obj)
        if bad is not None:
            raise ValueError(f'key "{bad}" is reserved for the JSON header (ATP-JSON-015)')
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameDecodeError(ErrorCode.EPROTO, f"bad ext: {exc}", stream_id=stream_id) from None
    return obj


def decode_payload(data: Payload, stream_id: int = 0, max_depth: int = 64) -> Any:
    """Decode a conventional (CBOR) payload; empty payload is None.

    Raises:
        FrameDecodeError: EPROTO on stream ``stream_id``.
    """
    if not data:
        return None
    try:
        obj = strict_cbor(data, max_depth)
        check_value(obj, 1, max_depth)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameDecodeError(
            ErrorCode.EPROTO, f"bad payload: {exc}", stream_id=stream_id
        ) from None
    return obj
