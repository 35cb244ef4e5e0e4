"""Broken-router variants of session 9 (loaded into router_variant.VARIANTS): the faults
the invalid vectors on a stream never opened let through (that stream is EPROTO whatever
the frame holds, ATP-STREAM-013), and MUSTs no variant broke before (ATP-SEQ-013,
ATP-FRAME-015, ATP-FRAME-024). Each patches the one place the fault lives in, so that a
REAL ``atp serve`` process is wrong in exactly that way
(tests/conformance/test_router_mutations.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def _wu_check(drop: Callable[[Mapping[str, Any]], str | None]) -> None:
    """The WINDOW_UPDATE ext check (_validate._check_window_update) blind to the key that
    ``drop(ext)`` names: the frame is checked without it, and the handler takes it as is."""
    from atp_proto.frames import _validate

    orig = _validate._check_window_update

    def check(ext: Any, sid: int) -> None:
        key = drop(ext) if sid else None
        if key is None:
            orig(ext, sid)
            return
        rest = {k: v for k, v in ext.items() if k != key}
        if rest.get("credit") is not None or rest.get("window") is not None:
            orig(rest, sid)

    _validate._check_window_update = check


def wu_credit_0_ignored() -> None:  # a credit of 0 taken as an increment of nothing
    # (ATP-FLOW-004: EPROTO)
    _wu_check(
        lambda ext: "credit" if type(ext.get("credit")) is int and ext["credit"] == 0 else None
    )


def wu_credit_range_stateful() -> None:  # a credit past 2^31-1 left to the window's own
    # check, which answers EWINDOW (ATP-FLOW-004, ATP-FRAME-023: EPROTO, without state)
    from atp_proto.frames._types import MAX_WINDOW

    def over(ext: Mapping[str, Any]) -> str | None:
        credit = ext.get("credit")
        return "credit" if type(credit) is int and credit > MAX_WINDOW else None

    _wu_check(over)


def wu_window_negative_ignored() -> None:  # a WINDOW_UPDATE window field below 0 taken
    # as absent (ATP-FRAME-020: EPROTO)
    def negative(ext: Mapping[str, Any]) -> str | None:
        w = ext.get("window")
        if isinstance(w, Mapping) and any(type(v) is int and v < 0 for v in w.values()):
            return "window"
        return None

    _wu_check(negative)


def fragments_cap_eproto() -> None:  # a CONT fragment at frag_seq 65,535 refused as a
    # protocol error (ATP-SEQ-013: ETOOBIG)
    from atp_proto.frames import _fragments
    from atp_proto.frames._errors import RemoteProtocolError
    from atp_proto.frames._types import ErrorCode

    orig = _fragments.Reassembler.push

    def push(self: Any, frame: Any, cost: int, max_message_size: int) -> Any:
        try:
            return orig(self, frame, cost, max_message_size)
        except RemoteProtocolError as exc:
            if exc.code == ErrorCode.ETOOBIG and "fragments" in str(exc):
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, "frag_seq overflow", stream_id=frame.stream_id
                ) from None
            raise

    _fragments.Reassembler.push = push  # type: ignore[method-assign]


def error_without_message_taken() -> None:  # an ERROR whose error map has a code but no
    # text message taken as an ERROR (ATP-FRAME-015: EPROTO)
    from mutation_variants import _validation

    from atp_proto.frames._types import FrameType

    def skip(frame: Any) -> bool:
        err = frame.ext.get("error") if frame.type == FrameType.ERROR else None
        return isinstance(err, Mapping) and isinstance(err.get("code"), str)

    _validation(skip)


def _lenient_payloads(*, trailing: bool, duplicate_keys: bool) -> None:
    """Payloads (not ext) the strict decoder refuses decoded again, with bytes after the
    first item ignored (``trailing``) or duplicate map keys allowed, the last value winning
    (``duplicate_keys``): tags and indefinite lengths stay refused."""
    import io

    import cbor2

    from atp_proto.frames import _cbor

    orig = _cbor.loads

    def loads(data: Any, max_depth: int, ext: bool) -> Any:
        try:
            return orig(data, max_depth, ext)
        except _cbor.DECODE_ERRORS:
            if ext:
                raise
            raw = bytes(data)
            bio = io.BytesIO(raw)
            dec = cbor2.CBORDecoder(
                bio,
                max_depth=max_depth + 1,
                allow_duplicate_keys=duplicate_keys,
                allow_indefinite=False,
                tag_hook=_cbor._refuse_tag,
                semantic_decoders=_cbor._NO_TAGS,
            )
            obj = dec.decode()
            if not trailing and bio.tell() != len(raw):
                raise ValueError("trailing data after the CBOR item") from None
            _cbor.check_value(obj, 1, max_depth, finite=False)
            return obj

    _cbor.loads = loads


def syn_trailing_bytes_taken() -> None:  # a SYN payload's bytes after its first CBOR item
    # ignored (ATP-FRAME-024: EPROTO)
    _lenient_payloads(trailing=True, duplicate_keys=False)


def syn_duplicate_key_taken() -> None:  # a SYN payload map with a key twice taken, the
    # last value winning (ATP-FRAME-024: EPROTO)
    _lenient_payloads(trailing=False, duplicate_keys=True)


def text_qos_integer_taken() -> None:  # a text qos written as the binary header's integer
    # (1 for gold) taken (ATP-JSON-018: EPROTO)
    from atp_proto.frames import _json
    from atp_proto.frames._types import QoS

    orig = _json.JsonMapping._from_obj

    def from_obj(self: Any, obj: Any, duplicate: str | None) -> Any:
        q = obj.get("qos") if isinstance(obj, Mapping) else None
        if type(q) is int and 0 <= q <= 3:
            obj = {k: v for k, v in obj.items() if k != "qos"}
            if q:
                obj["qos"] = QoS(q).label
        return orig(self, obj, duplicate)

    _json.JsonMapping._from_obj = from_obj  # type: ignore[method-assign]


def stream0_qos_ignored() -> None:  # a qos above 3 on stream 0 ignored, stream 0 having no
    # lane (ATP-FRAME-007: a connection error EPROTO)
    from atp_proto.frames import _codec

    orig = _codec.FrameDecoder._decode

    def decode(self: Any, buf: Any, pos: int, version: int, ftype: int, flags: int,
               qos: int, sid: int, *rest: int) -> Any:  # fmt: skip
        return orig(self, buf, pos, version, ftype, flags, 0 if not sid else qos, sid, *rest)

    _codec.FrameDecoder._decode = decode  # type: ignore[method-assign]


def handshake_timeout_fixed() -> None:  # the configured handshake timeout ignored: every
    # connection gets the built-in 10 s (ATP-WS-014: closed within the router's timeout)
    from atp_proto.router import config

    orig = config.load_file

    def load_file(path: str) -> dict[str, Any]:
        out = orig(path)
        out.pop("handshake_timeout_s", None)
        return out

    config.load_file = load_file


def _refuse(pick: Callable[[Any], bool], what: str) -> None:
    """The receive path's stateless checks (validate_frame) also refuse, as a stream error
    EPROTO, the frames ``pick`` chooses: a receiver stricter than the spec."""
    from atp_proto.frames import _receiving
    from atp_proto.frames._errors import RemoteProtocolError
    from atp_proto.frames._types import ErrorCode

    orig = _receiving.validate_frame

    def validate(frame: Any, limits: Any = None) -> None:
        if pick(frame):
            raise RemoteProtocolError(ErrorCode.EPROTO, what, stream_id=frame.stream_id)
        if limits is None:
            orig(frame)
        else:
            orig(frame, limits)

    _receiving.validate_frame = validate


def reserved_flag_refused() -> None:  # a frame with the reserved flag bit 0x80 refused
    # (ATP-FLAG-001: ignored)
    _refuse(lambda f: bool(f.flags & 0x80), "reserved flag bit 0x80 set")


def ack_on_data_refused() -> None:  # ACK on a DATA frame of a stream refused (ATP-FLAG-002:
    # ACK is ignored on frames other than heartbeats)
    from atp_proto.frames._types import FrameType

    _refuse(
        lambda f: f.type == FrameType.DATA and f.stream_id != 0 and bool(f.flags & 0x02),
        "ACK on a DATA frame that is no heartbeat",
    )


def non_syn_qos_refused() -> None:  # qos or ttl on a frame other than a SYN refused
    # (ATP-FRAME-016: ignored there)
    _refuse(
        lambda f: f.stream_id != 0 and not f.flags & 0x01 and bool(f.qos or f.ttl),
        "qos and ttl belong on a SYN only",
    )


def unknown_feature_refused() -> None:  # a CAPABILITIES naming a feature the router does
    # not know refused (ATP-EXT-003: ignored)
    from atp_proto.frames import _validate
    from atp_proto.frames._caps import FEATURES
    from atp_proto.frames._errors import RemoteProtocolError
    from atp_proto.frames._types import ErrorCode

    orig = _validate._check_capabilities

    def check(ext: Any, sid: int) -> None:
        orig(ext, sid)
        caps = ext.get("caps")
        features = caps.get("features") if isinstance(caps, Mapping) else None
        if isinstance(features, list) and set(features) - set(FEATURES):
            raise RemoteProtocolError(ErrorCode.EPROTO, "unknown feature in caps.features")

    _validate._check_capabilities = check


def unknown_flag_name_refused() -> None:  # a text frame naming a flag the router does not
    # know refused as malformed (ATP-JSON-005: ignored)
    from atp_proto.frames import _json
    from atp_proto.frames._errors import FrameDecodeError
    from atp_proto.frames._types import ErrorCode

    orig = _json.JsonMapping._from_obj

    def from_obj(self: Any, obj: Any, duplicate: str | None) -> Any:
        flags = obj.get("flags") if isinstance(obj, Mapping) else None
        if isinstance(flags, list) and any(
            isinstance(n, str) and n not in _json._FLAG_BY_NAME for n in flags
        ):
            raise FrameDecodeError(ErrorCode.EPROTO, "unknown flag name in a text frame")
        return orig(self, obj, duplicate)

    _json.JsonMapping._from_obj = from_obj  # type: ignore[method-assign]


def ext_on_later_fragment_dropped() -> None:  # ext on a fragment other than the first
    # dropped instead of refused (ATP-SEQ-006: EPROTO)
    from atp_proto.frames import _stream

    orig = _stream.Stream.receive_general

    def receive_general(self: Any, frame: Any, cost: int, max_message_size: int) -> Any:
        if frame.frag_seq and frame.ext:
            frame = frame._replace(ext=None)
        return orig(self, frame, cost, max_message_size)

    _stream.Stream.receive_general = receive_general  # type: ignore[method-assign]


VARIANTS: dict[str, Callable[[], None]] = {
    "wu-credit-0-ignored": wu_credit_0_ignored,
    "wu-credit-range-stateful": wu_credit_range_stateful,
    "wu-window-negative-ignored": wu_window_negative_ignored,
    "fragments-cap-eproto": fragments_cap_eproto,
    "error-without-message-taken": error_without_message_taken,
    "syn-trailing-bytes-taken": syn_trailing_bytes_taken,
    "syn-duplicate-key-taken": syn_duplicate_key_taken,
    "text-qos-integer-taken": text_qos_integer_taken,
    "stream0-qos-ignored": stream0_qos_ignored,
    "handshake-timeout-fixed": handshake_timeout_fixed,
    "reserved-flag-refused": reserved_flag_refused,
    "ack-on-data-refused": ack_on_data_refused,
    "non-syn-qos-refused": non_syn_qos_refused,
    "unknown-feature-refused": unknown_feature_refused,
    "unknown-flag-name-refused": unknown_flag_name_refused,
    "ext-on-later-fragment-dropped": ext_on_later_fragment_dropped,
}


def client_syn_frag_1() -> None:  # the client's SYN frames carry frag_seq 1 (ATP-STREAM-001:
    # a stream opens with a SYN at frag_seq 0)
    from router_variant import _frame, _wire

    from atp_proto.frames import FrameType

    _wire(
        lambda f: _frame(f, frag_seq=1) if f.type == FrameType.DATA and f.flags & 0x01 else f,
        lambda o: dict(o, frag_seq=1) if "SYN" in (o.get("flags") or []) else o,
    )


def client_reserved_flag_set() -> None:  # the client's DATA frames carry the reserved flag
    # bit 0x80 (ATP-FLAG-001: sent as 0)
    from router_variant import _frame, _wire

    from atp_proto.frames import FrameType

    _wire(
        lambda f: _frame(f, flags=f.flags | 0x80) if f.type == FrameType.DATA else f,
        lambda o: o,
    )


CLIENT_VARIANTS: dict[str, Callable[[], None]] = {
    "client-syn-frag-1": client_syn_frag_1,
    "client-reserved-flag-set": client_reserved_flag_set,
}
