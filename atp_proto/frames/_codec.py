"""Binary encoding: a fixed 24-byte header packed with ``struct``, then ext, then payload.

::

    offset  size  field
    0       1     version        (1)
    1       1     type           DATA, WINDOW_UPDATE, CAPABILITIES, BUDGET_UPDATE, ERROR
    2       1     flags          SYN ACK MORE FIN RST HB CONT
    3       1     qos            0 unspecified, 1 gold, 2 silver, 3 bronze
    4       4     stream_id      0 = the connection
    8       4     msg_seq
    12      2     frag_seq
    14      2     ttl            seconds, on SYN
    16      4     ext_len        CBOR map that follows the header
    20      4     payload_len    opaque bytes that follow ext

All integers are big-endian (ATP-FRAME). The decoder never copies a payload: it hands out
read-only ``memoryview`` slices of the bytes it was fed.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import cbor2

from ._errors import FrameDecodeError, LocalProtocolError
from ._frame import Frame, Payload
from ._types import DEFAULT_LIMITS, MAX_STREAM_ID, VERSION, ErrorCode, FrameType, Limits, QoS

HEADER: Final = struct.Struct("!BBBBIIHHII")
HEADER_SIZE: Final = HEADER.size  # 24

# Lookup tables so that decoding maps ints to enums with one dict access.
_TYPES: Final[dict[int, int]] = {int(t): t for t in FrameType}
_QOS: Final[dict[int, int]] = {int(q): q for q in QoS}
_new_frame = tuple.__new__
_EMPTY: Final[Mapping[str, Any]] = {}


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
    """CBOR-encode an ext map (empty map encodes to zero bytes).

    Raises:
        LocalProtocolError: a value is not CBOR-encodable, or a key is reserved
            (ATP-JSON-015).
    """
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


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame to bytes.

    Raises:
        LocalProtocolError: a field is out of range or ext cannot be encoded.
    """
    ext = encode_ext(frame.ext) if frame.ext else b""
    payload = frame.payload
    try:
        header = HEADER.pack(
            frame.version,
            frame.type,
            frame.flags,
            frame.qos,
            frame.stream_id,
            frame.msg_seq,
            frame.frag_seq,
            frame.ttl,
            len(ext),
            len(payload),
        )
    except struct.error as exc:
        raise LocalProtocolError(ErrorCode.EPROTO, f"frame field out of range: {exc}") from exc
    if ext:
        return b"".join((header, ext, payload))
    return header + payload if payload else header


def encode_frames(frames: Iterable[Frame]) -> bytes:
    """Encode frames back to back (one WebSocket binary message / one QUIC write)."""
    return b"".join([encode_frame(f) for f in frames])


def encoded_length(frame: Frame) -> int:
    """Exact encoded size of ``frame`` in bytes (the credit it costs, ATP-FLOW)."""
    return HEADER_SIZE + len(encode_ext(frame.ext)) + len(frame.payload)


# -- decoding -------------------------------------------------------------------------

_JSON_SCALARS: Final = (str, int, float, bool, type(None), bytes)


def _check_value(value: object, depth: int, max_depth: int, *, finite: bool = False) -> None:
    """Reject anything outside the JSON data model plus byte strings (no CBOR tags).

    With ``finite`` (ext, ATP-FRAME-006) NaN and the infinities are refused too: JSON
    has no such numbers.
    """
    if depth > max_depth:
        raise ValueError(f"nesting deeper than {max_depth}")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"map key {k!r} is not a text string")
            _check_value(v, depth + 1, max_depth, finite=finite)
    elif isinstance(value, list):
        for v in value:
            _check_value(v, depth + 1, max_depth, finite=finite)
    elif isinstance(value, float):
        if finite and not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
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


def _strict_cbor(data: Payload, max_depth: int) -> Any:
    bio = io.BytesIO(data)
    obj = cbor2.CBORDecoder(
        bio,
        max_depth=max_depth + 1,
        allow_duplicate_keys=False,
        allow_indefinite=False,
        tag_hook=_refuse_tag,  # ATP-FRAME-006: no tags at all
        semantic_decoders=_NO_TAGS,
    ).decode()
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
        obj = _strict_cbor(data, limits.max_depth)
        if not isinstance(obj, dict):
            raise ValueError(f"ext must be a CBOR map, got {type(obj).__name__}")
        _check_value(obj, 1, limits.max_depth, finite=True)
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
        obj = _strict_cbor(data, max_depth)
        _check_value(obj, 1, max_depth)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameDecodeError(
            ErrorCode.EPROTO, f"bad payload: {exc}", stream_id=stream_id
        ) from None
    return obj


def decode_frame(
    data: bytes, offset: int = 0, limits: Limits = DEFAULT_LIMITS
) -> tuple[Frame, int]:
    """Decode exactly one whole frame at ``offset``; return it and the offset after it.

    Raises:
        FrameDecodeError: malformed or truncated frame.
    """
    dec = FrameDecoder(limits)
    dec.feed(data[offset:] if offset else data)
    frame = dec.next_frame()
    if frame is None:
        raise FrameDecodeError(
            ErrorCode.EPROTO, f"truncated frame: {dec.buffered} bytes, need more", stream_id=0
        )
    return frame, len(data) - dec.buffered


class FrameDecoder:
    """Incremental decoder: feed any chunking of bytes, pull whole frames.

    Many frames per buffer and frames split across buffers both work. Memory stays
    bounded: at most one partial frame (≤ ``HEADER_SIZE + max_frame_size``) is buffered,
    and an oversized frame's body is skipped as it arrives, never buffered.

    :meth:`next_frame` returns a frame, ``None`` when more bytes are needed, or raises
    :class:`FrameDecodeError`. A stream-level error (``stream_id != 0``) consumes the bad
    frame and the decoder goes on; a connection-level one leaves it broken.
    """

    __slots__ = ("_broken", "_buf", "_pos", "_skip", "limits")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buf: bytes = b""
        self._pos = 0
        self._skip = 0
        self._broken: FrameDecodeError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame (plus bytes still to skip)."""
        return len(self._buf) - self._pos + self._skip

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken is not None:
            raise self._broken
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
            if not data:
                return
        if self._pos >= len(self._buf):
            self._buf, self._pos = data, 0
        else:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def next_frame(self) -> Frame | None:
        if self._broken is not None:
            raise self._broken
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < HEADER_SIZE or self._skip:
            return None
        version, ftype, flags, qos, sid, mseq, fseq, ttl, ext_len, pay_len = HEADER.unpack_from(
            buf, pos
        )
        body = ext_len + pay_len
        if version != VERSION:
            raise self._fail(f"unsupported version {version} (this peer speaks {VERSION})")
        if sid > MAX_STREAM_ID:
            raise self._fail(f"stream id {sid} has the reserved high bit set")
        limits = self.limits
        if body > limits.max_frame_size or ext_len > limits.max_ext_size:
            what = (
                f"ext of {ext_len} bytes exceeds max_ext_size {limits.max_ext_size}"
                if ext_len > limits.max_ext_size
                else f"frame body of {body} bytes exceeds max_frame_size {limits.max_frame_size}"
            )
            if sid == 0:
                raise self._fail(what, ErrorCode.ETOOBIG)
            # Skip the body without buffering it; the stream is reset, the session survives.
            have = avail - HEADER_SIZE
            if have >= body:
                self._pos = pos + HEADER_SIZE + body
            else:
                self._skip = body - have
                self._buf, self._pos = b"", 0
            raise FrameDecodeError(ErrorCode.ETOOBIG, what, stream_id=sid)
        end = pos + HEADER_SIZE + body
        if avail < HEADER_SIZE + body:
            return None
        self._pos = end
        start = pos + HEADER_SIZE
        mv = memoryview(buf)
        if ftype not in _TYPES:
            # ATP-FRAME-010: a type we do not know is skipped unread: its ext need not be
            # CBOR and its qos is not ours to check. The payload is handed on as is.
            return _new_frame(
                Frame,
                (
                    ftype,
                    flags,
                    sid,
                    mseq,
                    fseq,
                    qos,
                    ttl,
                    _EMPTY,
                    mv[start + ext_len : end],
                    VERSION,
                ),
            )
        if ext_len:
            try:
                ext: Mapping[str, Any] = decode_ext(mv[start : start + ext_len], sid, limits)
            except FrameDecodeError as exc:
                if not sid:  # connection-level: framing cannot be trusted any more
                    self._broken = exc
                    self._buf, self._pos = b"", 0
                raise
        else:
            ext = _EMPTY
        q = _QOS.get(qos)
        if q is None:
            if not sid:  # connection-level: leave the decoder broken
                raise self._fail(f"unknown qos value {qos}")
            raise FrameDecodeError(ErrorCode.EPROTO, f"unknown qos value {qos}", stream_id=sid)
        return _new_frame(
            Frame,
            (
                _TYPES[ftype],
                flags,  # the wire byte as a plain int: IntFlag operators are slow
                sid,
                mseq,
                fseq,
                q,
                ttl,
                ext,
                mv[start + ext_len : end],
                version,
            ),
        )

    def _fail(self, message: str, code: ErrorCode = ErrorCode.EPROTO) -> FrameDecodeError:
        self._broken = FrameDecodeError(code, message, stream_id=0)
        self._buf, self._pos = b"", 0
        return self._broken


def decode_frames(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[Frame]:
    """Decode a buffer that holds whole frames only (a WebSocket binary message).

    Raises:
        FrameDecodeError: on the first bad frame, or a truncated frame at the end
            (connection-level: framing is lost).
    """
    dec = FrameDecoder(limits)
    dec.feed(data)
    frames = list(dec)
    if dec.buffered:
        raise FrameDecodeError(
            ErrorCode.EPROTO,
            f"message ends inside a frame ({dec.buffered} bytes left over)",
            stream_id=0,
        )
    return frames
