"""Strict CBOR for ext maps and conventional payloads (ATP-FRAME-005/006).

What the spec allows in CBOR is the JSON data model plus byte strings: text-keyed maps,
arrays, text and byte strings, integers, finite floats (ext), true/false/null. No tags
(cbor2 would otherwise build datetimes, bignums, shared references...), no indefinite
lengths, no duplicate keys, nothing nested deeper than ``max_depth``, and nothing after
the one item. The binary codec (``_codec``), the frame model (``_frame``) and the JSON
mapping (``_json``) all decode through here, so each rule is written once, and this module
depends only on ``_types`` and ``_errors`` (it used to live in ``_codec``, which made a
circle with ``_frame``).

Two implementations of one contract, :func:`loads` / :func:`dumps` (issue 10 item 6):

* ``c``: the extension ``_ccbor`` (``_ccbor.c``, built at ``pip install``), which checks
  every rule while it decodes or encodes, in one pass;
* ``python``: cbor2's C decoder with the options that enforce what they can (tags,
  indefinite lengths, duplicate keys, depth), then :func:`check_value` for the rest; the
  encoder is ``cbor2.dumps`` whose output is decoded back by the same strict rules.

The C one runs when it imports and ``ATP_PURE_CBOR`` is unset (or ``0``);
:data:`IMPLEMENTATION` says which, and :func:`use` switches (the tests run both paths and
hold them to the same answers: tests/frames/test_ccbor.py). Both raise only
:data:`DECODE_ERRORS` on bad input, which the callers below turn into the spec's EPROTO.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping
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
        return dumps(ext if type(ext) is dict else dict(ext), ENCODE_MAX_DEPTH, True)
    except DECODE_ERRORS as exc:
        raise LocalProtocolError(ErrorCode.EPROTO, f"ext cannot be encoded as CBOR: {exc}") from exc


def encode_payload(obj: Any) -> bytes:
    """CBOR-encode a conventional payload (the JSON data model and bytes; NaN allowed).

    Raises:
        LocalProtocolError: ``obj`` holds something a receiver would refuse (a type outside
            the model, an integer beyond 64 bits, a non-text key, nesting deeper than
            :data:`ENCODE_MAX_DEPTH`).
    """
    try:
        return dumps(obj, ENCODE_MAX_DEPTH, False)
    except DECODE_ERRORS as exc:
        raise LocalProtocolError(
            ErrorCode.EPROTO, f"payload cannot be encoded as CBOR: {exc}"
        ) from exc


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


def check_value(
    value: object, depth: int, max_depth: int, *, finite: bool = False, encoding: bool = False
) -> None:
    """Reject anything outside the JSON data model plus byte strings (no CBOR tags).

    With ``finite`` (ext, ATP-FRAME-006) NaN and the infinities are refused too: JSON
    has no such numbers. With ``encoding`` (a value about to be encoded, not one decoded)
    integers must fit in 64 bits, the most CBOR holds without a tag; tuples are arrays.

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
            if inline and (
                tv is str or (tv is int and not encoding) or tv is bytes or tv is bool or v is None
            ):
                continue
            check_value(v, depth + 1, max_depth, finite=finite, encoding=encoding)
    elif t is list:
        inline = depth < max_depth
        for v in value:  # type: ignore[attr-defined]
            tv = type(v)
            if inline and (
                tv is str or (tv is int and not encoding) or tv is bytes or tv is bool or v is None
            ):
                continue
            check_value(v, depth + 1, max_depth, finite=finite, encoding=encoding)
    elif t is float or isinstance(value, float):
        if finite and not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueError(f"{value} is not a finite number")
    elif isinstance(value, int):
        if encoding and not -_U64_END <= value < _U64_END:
            raise ValueError(f"integer {value} does not fit in 64 bits (CBOR would need a tag)")
    elif isinstance(value, dict | list) or (encoding and isinstance(value, tuple)):
        check_value(
            dict(value) if isinstance(value, dict) else list(value),
            depth,
            max_depth,
            finite=finite,
            encoding=encoding,
        )
    elif not isinstance(value, _JSON_SCALARS):
        raise ValueError(f"unsupported CBOR item {type(value).__name__} (tags are not allowed)")


_U64_END: Final = 1 << 64


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
    # in bytes: len() of a memoryview counts its items, which may be wider than a byte
    size = data.nbytes if type(data) is memoryview else len(data)
    if bio.tell() != size:
        raise ValueError(f"{size - bio.tell()} bytes of trailing data after the CBOR item")
    return obj


def _loads_py(data: Payload, max_depth: int, ext: bool) -> Any:
    """The pure-Python path of :func:`loads`: cbor2 with every option it has, then a walk."""
    obj = strict_cbor(data, max_depth)
    if ext and not isinstance(obj, dict):
        raise ValueError(f"ext must be a CBOR map, got {type(obj).__name__}")
    check_value(obj, 1, max_depth, finite=ext)
    return obj


def _dumps_py(obj: Any, max_depth: int, finite: bool) -> bytes:
    """The pure-Python path of :func:`dumps`: the value checked in one walk (types, keys,
    integer range, depth, NaN), then ``cbor2.dumps``."""
    check_value(obj, 1, max_depth, finite=finite, encoding=True)
    data: bytes = cbor2.dumps(obj)
    return data


#: what :func:`loads` and :func:`dumps` raise on input they refuse, in either path
#: (BufferError: a view without a simple buffer, such as a strided memoryview)
DECODE_ERRORS: Final = (
    cbor2.CBORError,
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    BufferError,
)
#: nesting bound when encoding: no receiver accepts more by default (ext 16, payload 64);
#: it is there so that a cycle or a runaway structure fails instead of recursing
ENCODE_MAX_DEPTH: Final = 256
#: the payload nesting a receiver accepts (ATP-SEC-012: untrusted input is bounded)
PAYLOAD_MAX_DEPTH: Final = 64

try:
    if os.environ.get("ATP_PURE_CBOR", "0") not in ("", "0"):
        raise ImportError("ATP_PURE_CBOR is set")
    # an explicit re-export (mypy): _frame and _codec take its frame shortcuts
    from . import _ccbor as _ccbor  # noqa: PLC0414
except ImportError:  # pragma: no cover - the build went without a C compiler
    _ccbor = None  # type: ignore[assignment]

#: ``loads(data, max_depth, ext)``: one strict item; ``ext`` adds "a map, finite floats"
loads: Callable[[Payload, int, bool], Any]
#: ``dumps(obj, max_depth, finite)``: the JSON data model and bytes, as cbor2 writes them
dumps: Callable[[Any, int, bool], bytes]
#: "c" or "python": which path runs
IMPLEMENTATION: str


def use(implementation: str) -> str:
    """Select ``"c"`` or ``"python"``; return the one selected before (tests, benchmarks).

    Raises:
        ValueError: ``"c"`` when the extension is not built.
    """
    global loads, dumps, IMPLEMENTATION  # noqa: PLW0603 - the callers read them at call time
    before = str(globals().get("IMPLEMENTATION", implementation))
    if implementation == "c":
        if _ccbor is None:
            raise ValueError("the C extension atp_proto.frames._ccbor is not built")
        loads, dumps = _ccbor.loads, _ccbor.dumps
    elif implementation == "python":
        loads, dumps = _loads_py, _dumps_py
    else:
        raise ValueError(f"unknown CBOR implementation {implementation!r}")
    IMPLEMENTATION = implementation
    return before


def available() -> list[str]:
    """The implementations this installation has."""
    return ["c", "python"] if _ccbor is not None else ["python"]


use("c" if _ccbor is not None else "python")


def decode_ext(
    data: Payload, stream_id: int = 0, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Decode and validate an ext map.

    Raises:
        FrameDecodeError: EPROTO, for ``stream_id`` (0 means connection-level).
    """
    try:
        obj: dict[str, Any] = loads(data, limits.max_depth, True)
        bad = reserved_key(obj)
        if bad is not None:
            raise ValueError(f'key "{bad}" is reserved for the JSON header (ATP-JSON-015)')
    except DECODE_ERRORS as exc:
        raise FrameDecodeError(ErrorCode.EPROTO, f"bad ext: {exc}", stream_id=stream_id) from None
    return obj


def decode_payload(data: Payload, stream_id: int = 0, max_depth: int = PAYLOAD_MAX_DEPTH) -> Any:
    """Decode a conventional (CBOR) payload; empty payload is None.

    Raises:
        FrameDecodeError: EPROTO on stream ``stream_id``.
    """
    if not data:
        return None
    try:
        return loads(data, max_depth, False)
    except DECODE_ERRORS as exc:
        raise FrameDecodeError(
            ErrorCode.EPROTO, f"bad payload: {exc}", stream_id=stream_id
        ) from None
