"""Broken-router variants for the spec points the independent client found unclear
(examples/node-client/README.md; loaded into router_variant.VARIANTS): each puts back the
reference's old answer, or another plausible reading of the old text, so that a REAL
``atp serve`` process is wrong in exactly that way and its case must catch it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def credit_over_range_ewindow() -> None:  # credit 2^31 read as a window overflow (ATP-FLOW-004)
    from atp_proto.frames import _validate
    from atp_proto.frames._errors import RemoteProtocolError
    from atp_proto.frames._types import MAX_WINDOW, ErrorCode

    orig = _validate._check_window_update

    def check(ext: Any, sid: int) -> None:
        credit = ext.get("credit")
        if isinstance(credit, int) and credit > MAX_WINDOW:
            raise RemoteProtocolError(ErrorCode.EWINDOW, "window past 2^31-1", stream_id=sid)
        orig(ext, sid)

    _validate._check_window_update = check


def meta_not_map_ignored() -> None:  # a SYN meta [1] read as no meta (ATP-FRAME-025)
    from collections.abc import Mapping

    from atp_proto.frames import _receiving

    orig = _receiving.validate_frame

    def validate(frame: Any, limits: Any = None) -> None:
        ext = frame.ext
        if ext and "meta" in ext and not isinstance(ext["meta"], Mapping):
            kept = {k: v for k, v in ext.items() if k != "meta"}
            frame = frame._replace(ext=kept)
        orig(frame, limits)

    _receiving.validate_frame = validate


def refused_syn_id_free() -> None:  # a SYN refused before its stream existed leaves its id
    # free (ATP-STREAM-002): the reference's old behaviour for a bad ext or header field
    from atp_proto.frames import _errors

    _errors.ProtocolError.syn = property(  # type: ignore[assignment]
        lambda self: False, lambda self, value: None
    )


def etoobig_before_eproto() -> None:  # a message ending inside an oversized frame gets the
    # stream error ETOOBIG, then EPROTO (ATP-WS-001): the reference's old answer
    from atp_proto.frames import _receiving

    orig = _receiving.ReceiveMixin._drain_decoder

    def drain(
        self: Any,
        now: float,
        events: Any,
        dec: Any = None,
        channel: Any = None,
        message: bool = False,
    ) -> None:
        orig(self, now, events, dec, channel)

    _receiving.ReceiveMixin._drain_decoder = drain


def unknown_alias_takes_id() -> None:  # a frame on an alias naming no stream allocates an
    # id: the next alias SYN skips it (ATP-JSON-013)
    from atp_proto.frames import _json

    orig = _json.JsonMapping._resolve

    def resolve(self: Any, raw: object, syn: bool) -> int:
        sid = orig(self, raw, syn)
        if self._transient is not None and self._transient[0] == sid:
            self._next_id = sid + 1
        return sid

    _json.JsonMapping._resolve = resolve


def small_message_size_ignored() -> None:  # a client's max_message_size below 1,024 read
    # as out of range and ignored, as for max_frame_size (ATP-SESS-008, ATP-LIMIT-006)
    from atp_proto.frames import _caps

    orig = _caps.PeerCaps.parse

    def parse(self: Any, caps: Any) -> Any:
        mm = caps.get("max_message_size")
        if isinstance(mm, int) and mm < 1024:
            caps = {k: v for k, v in caps.items() if k != "max_message_size"}
        return orig(self, caps)

    _caps.PeerCaps.parse = parse


VARIANTS: dict[str, Callable[[], None]] = {
    "small-message-size-ignored": small_message_size_ignored,
    "unknown-alias-takes-id": unknown_alias_takes_id,
    "etoobig-before-eproto": etoobig_before_eproto,
    "refused-syn-id-free": refused_syn_id_free,
    "credit-over-range-ewindow": credit_over_range_ewindow,
    "meta-not-map-ignored": meta_not_map_ignored,
}

#: the same faults in the Python client testee (client_variant.py)
CLIENT_VARIANTS: dict[str, Callable[[], None]] = {
    "credit-over-range-ewindow": credit_over_range_ewindow,
    "etoobig-before-eproto": etoobig_before_eproto,
}
