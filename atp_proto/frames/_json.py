"""The JSON text mapping (spec §"JSON text mapping").

A WebSocket text message holds one frame as a JSON object in the shape of the seed's
SYN / PARTIAL / FINAL examples. Header fields are top-level keys, ``payload`` is any JSON
value (CBOR bytes in the binary encoding), and every other key is an ext entry.

String stream ids are *aliases*: per connection, :class:`JsonMapping` maps each alias to
a numeric stream id and back, so replies carry the alias the client used. A SYN naming an
alias whose stream has closed opens a new stream under it (a browser may reuse "st1").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import cbor2

from ._cbor import check_value, decode_payload, reserved_key
from ._errors import FrameDecodeError, LocalProtocolError
from ._frame import Frame
from ._types import (
    DEFAULT_LIMITS,
    FLAG_ORDER,
    MAX_STREAM_ID,
    U16_MAX,
    U32_MAX,
    VERSION,
    ErrorCode,
    Flags,
    FrameType,
    Limits,
    QoS,
    is_uint,
)

#: Top-level keys that map to header fields. ``session_id`` is not one: it is an
#: informational ext entry (binary frames need none: the connection is the session).
HEADER_KEYS: Final = frozenset(
    {"v", "type", "stream_id", "msg_seq", "frag_seq", "flags", "qos", "ttl"}
)
_PAYLOAD_KEYS: Final = frozenset({"payload", "payload_b64"})
_FLAG_BY_NAME: Final = {f.name: f for f in FLAG_ORDER}
_QOS_BY_NAME: Final = {q.label: q for q in QoS if q is not QoS.UNSPECIFIED}
_TYPE_BY_NAME: Final = {t.name: t for t in FrameType}
_TYPE_BY_VALUE: Final = {int(t): t for t in FrameType}
#: top-level keys whose duplicates leave the stream (or its opening) unknown
_ROUTING_KEYS: Final = frozenset({"v", "stream_id", "flags", "type"})
_LEADING_EXT: Final = ("window", "meta")  # placed before payload, as in the seed SYN
_RETIRED_ALIASES: Final = 1024


_PAYLOAD_DEPTH: Final = 64  # as decode_payload: ext depth is checked apart (limits)
_CBOR_INT_MIN: Final = -(1 << 64)
_CBOR_INT_MAX: Final = (1 << 64) - 1


def _check_json(value: object, depth: int, max_depth: int) -> None:
    """Everything a text frame holds must map to CBOR without a tag or an error: text
    without lone surrogates (``"\\ud800"`` is valid JSON but no Unicode text), finite
    numbers, integers within CBOR's 64-bit range, bounded nesting (ATP-JSON-006)."""
    if depth > max_depth:
        raise ValueError(f"nesting deeper than {max_depth}")
    if isinstance(value, str):
        if not value.isascii():
            _check_text(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not k.isascii():
                _check_text(k)
            _check_json(v, depth + 1, max_depth)
    elif isinstance(value, list):
        for v in value:
            _check_json(v, depth + 1, max_depth)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"the number {value} is out of range")
    elif (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not _CBOR_INT_MIN <= value <= _CBOR_INT_MAX
    ):
        raise ValueError("an integer is outside -2^64 .. 2^64-1")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"a string holds a lone surrogate (U+{ord(text[exc.start]):04X}), not Unicode text"
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _uint(obj: Mapping[str, Any], key: str, hi: int, default: int, sid: int) -> int:
    value = obj.get(key, default)
    if not is_uint(value) or value > hi:
        raise FrameDecodeError(
            ErrorCode.EPROTO, f'"{key}" must be an integer in 0..{hi}, got {value!r}', stream_id=sid
        )
    return value


class JsonMapping:
    """Per-connection JSON ↔ frame mapping, holding the stream-id alias table.

    Memory is bounded: live aliases are bounded by the connection's stream limit (the
    caller calls :meth:`forget` when a stream closes), retired ones by an LRU of 1024.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.session_id: str | None = None
        self._by_alias: dict[str, int] = {}
        self._by_id: dict[int, str] = {}
        self._retired: OrderedDict[str, int] = OrderedDict()
        self._next_id = 1
        self._transient: tuple[int, str] | None = None
        #: streams opened under an alias whose numeric id no sent frame has named yet
        self._unannounced: set[int] = set()

    # -- aliases --------------------------------------------------------------------

    def note_stream_id(self, stream_id: int) -> None:
        """Record a numeric id used directly, so aliases never collide with it."""
        if stream_id >= self._next_id:
            self._next_id = stream_id + 1

    def _resolve(self, raw: object, syn: bool) -> int:
        if raw is None:
            return 0
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 0 <= raw <= MAX_STREAM_ID:
                raise FrameDecodeError(
                    ErrorCode.EPROTO, f"stream_id {raw} out of range 0..{MAX_STREAM_ID}"
                )
            self.note_stream_id(raw)
            return raw
        if not isinstance(raw, str) or not raw or len(raw) > self.limits.max_alias_len:
            raise FrameDecodeError(
                ErrorCode.EPROTO,
                f"stream_id must be an integer or a non-empty string of at most "
                f"{self.limits.max_alias_len} characters",
            )
        if not raw.isascii():
            try:
                _check_text(raw)
            except ValueError as exc:  # no reply could name this alias: the session ends
                raise FrameDecodeError(ErrorCode.EPROTO, f"stream_id alias: {exc}") from None
        sid = self._by_alias.get(raw)
        if sid is not None and not (syn and self._is_retired(sid)):
            return sid
        if not syn:
            retired = self._retired.get(raw)
            if retired is not None:
                return retired
            # An alias never opened: name an id no stream has and store nothing (the
            # connection refuses or discards the frame; a peer cannot grow this table).
            # The alias is kept only while this one message is handled, for the reply.
            sid = min(self._next_id, MAX_STREAM_ID)
            self._transient = (sid, raw)
            return sid
        if self._next_id > MAX_STREAM_ID:
            raise FrameDecodeError(ErrorCode.EPROTO, "stream ids exhausted on this connection")
        sid = self._next_id
        self._next_id += 1
        old = self._by_alias.get(raw)
        if old is not None:
            self._by_id.pop(old, None)
        self._by_alias[raw] = sid
        self._by_id[sid] = raw
        self._retired.pop(raw, None)
        self._unannounced.add(sid)
        return sid

    def allocated(self, stream_id: int) -> bool:
        """Whether a SYN under an alias was given this id (a transient id is not)."""
        return stream_id in self._by_id

    def _is_retired(self, sid: int) -> bool:
        alias = self._by_id.get(sid)
        return alias is not None and self._retired.get(alias) == sid

    def forget(self, stream_id: int) -> None:
        """The stream closed: its alias may be reused by a later SYN."""
        self._unannounced.discard(stream_id)
        alias = self._by_id.pop(stream_id, None)
        if alias is None:
            return
        if self._by_alias.get(alias) == stream_id:
            del self._by_alias[alias]
        self._retired[alias] = stream_id
        self._retired.move_to_end(alias)
        while len(self._retired) > _RETIRED_ALIASES:
            self._retired.popitem(last=False)

    def announcement_pending(self, stream_id: int) -> bool:
        """Whether the next DATA frame built for the stream will carry ``stream_num``."""
        return stream_id in self._unannounced

    def take_announcement(self, stream_id: int) -> bool:
        """True once for a stream a SYN opened under an alias: its first DATA frame is
        being built and must name the numeric id (ATP-JSON-016)."""
        if stream_id in self._unannounced:
            self._unannounced.discard(stream_id)
            return True
        return False

    def transient_alias(self, stream_id: int) -> str | None:
        """The alias naming no stream that this message used for ``stream_id`` (an id no
        stream has, allocated to nothing: ATP-JSON-013), else None."""
        if self._transient is not None and self._transient[0] == stream_id:
            return self._transient[1]
        return None

    def alias_of(self, stream_id: int) -> str | int:
        alias = self._by_id.get(stream_id)
        if alias is not None:
            return alias
        if self._transient is not None and self._transient[0] == stream_id:
            return self._transient[1]
        return stream_id

    def end_message(self) -> None:
        """The current text message is handled: drop its transient alias."""
        self._transient = None

    # -- decoding ---------------------------------------------------------------------

    def decode(self, text: str | bytes) -> Frame | None:
        """One JSON text message to a frame; ``None`` for an unknown frame type (ignored).

        Raises:
            FrameDecodeError: malformed JSON or fields. Stream-level when the stream is
                known, else connection-level (stream 0).
        """
        if len(text) > self.limits.max_text_size:
            raise FrameDecodeError(
                ErrorCode.ETOOBIG,
                f"text message of {len(text)} bytes exceeds {self.limits.max_text_size}",
            )
        dups: list[tuple[str, object]] = []

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            d = dict(items)
            if len(d) != len(items):  # RFC 8259 4: names SHOULD be unique; ATP: MUST
                seen: set[str] = set()
                for k, _ in items:
                    if k in seen:
                        dups.append((k, d))
                    seen.add(k)
            return d

        try:
            obj = json.loads(text, object_pairs_hook=pairs, parse_constant=_refuse_constant)
        except RecursionError:
            raise FrameDecodeError(ErrorCode.EPROTO, "JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise FrameDecodeError(ErrorCode.EPROTO, f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise FrameDecodeError(ErrorCode.EPROTO, "a text frame must be a JSON object")
        dup: str | None = None
        for key, where in dups:
            if where is obj and key in _ROUTING_KEYS:
                # which stream (or whether a SYN) cannot be told: a connection error
                raise FrameDecodeError(ErrorCode.EPROTO, f'duplicate key "{key}"')
            dup = dup or key
        return self._from_obj(obj, dup)

    def from_obj(self, obj: Mapping[str, Any]) -> Frame | None:
        """A decoded JSON object to a frame (see :meth:`decode`)."""
        return self._from_obj(obj, None)

    def _from_obj(self, obj: Mapping[str, Any], duplicate: str | None) -> Frame | None:
        version = _uint(obj, "v", 0xFF, VERSION, 0)
        if version != VERSION:
            raise FrameDecodeError(
                ErrorCode.EPROTO, f"unsupported version {version} (this peer speaks {VERSION})"
            )
        ftype_raw = obj.get("type", "DATA")
        ftype: int | None
        if isinstance(ftype_raw, str):
            ftype = _TYPE_BY_NAME.get(ftype_raw)
        elif is_uint(ftype_raw):
            ftype = _TYPE_BY_VALUE.get(ftype_raw) if ftype_raw <= 0xFF else -1
        else:
            ftype = -1  # not a type at all: refused once the stream is known
        if ftype is None:
            return None  # ATP-JSON-005 / ATP-JSON-009: an unknown type is ignored, unread
        flags_raw = obj.get("flags", [])
        flags = Flags(0)
        flags_ok = isinstance(flags_raw, list) and all(isinstance(f, str) for f in flags_raw)
        if flags_ok:
            for name in flags_raw:
                flags |= _FLAG_BY_NAME.get(name, Flags(0))  # unknown flag names are ignored
        syn = bool(flags & Flags.SYN)
        sid = self._resolve(obj.get("stream_id"), syn)
        # From here on the stream is known: every bad field is a stream error on it
        # (ATP-JSON-006), or a connection error on stream 0; a SYN refused so still uses
        # its id (ATP-STREAM-002).
        try:
            return self._decode_known(
                obj, ftype, ftype_raw, flags, flags_ok, sid, duplicate, version
            )
        except FrameDecodeError as exc:
            exc.syn = syn and flags_ok
            raise

    def _decode_known(
        self,
        obj: Mapping[str, Any],
        ftype: int,
        ftype_raw: object,
        flags: Flags,
        flags_ok: bool,
        sid: int,
        duplicate: str | None,
        version: int,
    ) -> Frame:
        """The rest of :meth:`decode`, once the frame's stream is known."""
        if not flags_ok:
            raise FrameDecodeError(
                ErrorCode.EPROTO, '"flags" must be an array of flag names', stream_id=sid
            )
        if ftype < 0:
            raise FrameDecodeError(
                ErrorCode.EPROTO,
                f'"type" must be a frame type name or an integer in 0..255, got {ftype_raw!r}',
                stream_id=sid,
            )
        if duplicate is not None:
            raise FrameDecodeError(
                ErrorCode.EPROTO, f'duplicate key "{duplicate}" in a text frame', stream_id=sid
            )
        try:
            _check_json(obj, 0, max(self.limits.max_depth, _PAYLOAD_DEPTH) + 1)
        except (ValueError, RecursionError) as exc:
            raise FrameDecodeError(
                ErrorCode.EPROTO, f"bad text frame: {exc}", stream_id=sid
            ) from None
        session_id = obj.get("session_id")
        if (
            self.session_id is None
            and isinstance(session_id, str)
            and len(session_id) <= self.limits.max_alias_len
        ):  # a bad one is refused by validate_frame
            self.session_id = session_id
        qos_raw = obj.get("qos")
        if qos_raw is None:
            qos = QoS.UNSPECIFIED
        else:
            q = _QOS_BY_NAME.get(qos_raw) if isinstance(qos_raw, str) else None
            if q is None:
                raise FrameDecodeError(
                    ErrorCode.EPROTO,
                    f'"qos" must be "gold", "silver" or "bronze", got {qos_raw!r}',
                    stream_id=sid,
                )
            qos = q
        msg_seq = _uint(obj, "msg_seq", U32_MAX, 0, sid)
        frag_seq = _uint(obj, "frag_seq", U16_MAX, 0, sid)
        ttl = _uint(obj, "ttl", U16_MAX, 0, sid)
        if "payload" in obj and "payload_b64" in obj:
            raise FrameDecodeError(
                ErrorCode.EPROTO, 'a frame has "payload" or "payload_b64", not both', stream_id=sid
            )
        if "payload_b64" in obj:
            b64 = obj["payload_b64"]
            try:
                if not isinstance(b64, str):
                    raise ValueError("not a string")
                payload = base64.b64decode(b64, validate=True)
            except (ValueError, binascii.Error) as exc:
                raise FrameDecodeError(
                    ErrorCode.EPROTO, f'"payload_b64" is not base64: {exc}', stream_id=sid
                ) from None
        elif obj.get("payload") is not None:
            try:
                payload = cbor2.dumps(obj["payload"])
            except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:  # pragma: no cover
                # defensive: _check_json has refused what CBOR cannot hold
                raise FrameDecodeError(
                    ErrorCode.EPROTO, f'"payload" cannot be CBOR: {exc}', stream_id=sid
                ) from None
        else:
            payload = b""
        ext = {k: v for k, v in obj.items() if k not in HEADER_KEYS and k not in _PAYLOAD_KEYS}
        if ext:
            try:
                check_value(ext, 1, self.limits.max_depth, finite=True)
            except ValueError as exc:
                raise FrameDecodeError(ErrorCode.EPROTO, f"bad ext: {exc}", stream_id=sid) from None
        return Frame(ftype, flags, sid, msg_seq, frag_seq, qos, ttl, ext or None, payload, version)

    # -- encoding ---------------------------------------------------------------------

    def to_obj(self, frame: Frame) -> dict[str, Any]:
        """A frame as a JSON-ready dict, in the key order of the seed examples.

        An ERROR on a stream opened under an alias names the alias's numeric id in
        ``stream_num`` (ATP-JSON-016; the first DATA frame gets it from
        :meth:`take_announcement`)."""
        ext = frame.ext
        if ext:
            bad = reserved_key(ext)
            if bad is not None:
                raise LocalProtocolError(
                    ErrorCode.EPROTO,
                    f'ext key "{bad}" is reserved for the JSON header (ATP-JSON-015)',
                    stream_id=frame.stream_id,
                )
        out: dict[str, Any] = {"v": frame.version}
        session_id = ext.get("session_id", self.session_id)
        if session_id is not None:
            out["session_id"] = _jsonable(session_id)
        out["stream_id"] = self.alias_of(frame.stream_id)
        if frame.type == FrameType.ERROR and frame.stream_id in self._by_id:
            out["stream_num"] = frame.stream_id  # ATP-JSON-016
        out["msg_seq"] = frame.msg_seq
        out["frag_seq"] = frame.frag_seq
        out["flags"] = [f.name for f in FLAG_ORDER if frame.flags & f]
        if frame.qos:
            try:
                out["qos"] = QoS(frame.qos).label
            except ValueError:
                out["qos"] = frame.qos
        if frame.ttl:
            out["ttl"] = frame.ttl
        if frame.type != FrameType.DATA:
            try:
                out["type"] = FrameType(frame.type).name
            except ValueError:
                out["type"] = frame.type
        for key in _LEADING_EXT:
            if key in ext:
                out[key] = ext[key]
        if frame.payload:
            try:
                out["payload"] = decode_payload(frame.payload, frame.stream_id)
                if out["payload"] is None:
                    # JSON null means "no payload": a CBOR null must travel as bytes
                    raise ValueError("null payload")
                json.dumps(out["payload"], allow_nan=False)  # ATP-JSON-004: NaN is not JSON
            except (FrameDecodeError, TypeError, ValueError):
                out.pop("payload", None)
                out["payload_b64"] = base64.b64encode(frame.payload).decode("ascii")
        for key, value in ext.items():
            if key not in _LEADING_EXT and key != "session_id":
                out[key] = _jsonable(value)
        return out

    def encode(self, frame: Frame) -> str:
        """A frame as one JSON text message (compact)."""
        return json.dumps(self.to_obj(frame), separators=(",", ":"), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    """ext values may hold CBOR byte strings; JSON carries them as base64 text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def frame_from_json(text: str | bytes, limits: Limits = DEFAULT_LIMITS) -> Frame | None:
    """Decode one JSON frame with a fresh alias table (tools, tests)."""
    return JsonMapping(limits).decode(text)


def frame_to_json(frame: Frame, *, indent: int | None = None) -> str:
    """Encode one frame as JSON with numeric stream ids (tools, tests)."""
    return json.dumps(JsonMapping().to_obj(frame), indent=indent, ensure_ascii=False)
