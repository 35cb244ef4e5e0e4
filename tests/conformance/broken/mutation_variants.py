"""Broken-router variants for MUSTs that no other variant broke (loaded into
router_variant.VARIANTS): each is a mistake an independent implementer could plausibly
make, patched into the one place it lives in, so that a REAL ``atp serve`` process is
wrong in exactly that way and the case citing the MUST must catch it
(tests/conformance/test_router_mutations.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from router_variant import _frame, _wire

from atp_proto.frames import Frame, FrameType

_HB, _ACK, _CONT = 0x20, 0x02, 0x40


def _handler(ftype: int, make: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
    """Replace the receive path's handler of one frame type by ``make(original)``: the
    dispatch table holds the functions themselves, so patching the method is not enough."""
    from atp_proto.frames import _receiving

    table = _receiving.ReceiveMixin._HANDLERS
    table[ftype] = make(table[ftype])


def seq_from_one() -> None:  # the router numbers its replies 2, 3, ... whatever the SYN's
    # msg_seq (ATP-SEQ-003: SYN.msg_seq + 1)
    from atp_proto.frames import _receiving

    orig = _receiving.ReceiveMixin._accept_stream

    def accept(self: Any, frame: Any, now: float, encoding: Any) -> Any:
        rec = orig(self, frame, now, encoding)
        rec.send_seq = 2
        return rec

    _receiving.ReceiveMixin._accept_stream = accept  # type: ignore[method-assign]


def cont_never_set() -> None:  # fragments of a message go out without CONT (ATP-SEQ-010)
    _wire(
        lambda f: _frame(f, flags=f.flags & ~_CONT) if f.type == FrameType.DATA else f,
        lambda o: dict(o, flags=[x for x in o.get("flags", []) if x != "CONT"]),
    )


def credit_unchecked() -> None:  # a DATA frame past the credit granted is taken
    # (ATP-FLOW-002: EWINDOW)
    from atp_proto.frames import _windows

    def consume(self: Any, cost: int, stream_id: int) -> None:
        self.credit = max(0, self.credit - cost)

    _windows.RecvWindow.consume = consume  # type: ignore[method-assign]


def message_size_unchecked() -> None:  # a reassembled message past max_message_size is
    # taken (ATP-SEQ-007: ETOOBIG)
    from atp_proto.frames import _fragments

    orig = _fragments.Reassembler.push

    def push(self: Any, frame: Any, cost: int, max_message_size: int) -> Any:
        return orig(self, frame, cost, 1 << 40)

    _fragments.Reassembler.push = push  # type: ignore[method-assign]


def hb_ack_empty() -> None:  # a heartbeat answered without its payload (ATP-TIME-002)
    _wire(
        lambda f: (
            _frame(f, payload=b"")
            if f.type == FrameType.DATA and f.stream_id == 0 and f.flags & _ACK
            else f
        ),
        lambda o: (
            {k: v for k, v in o.items() if k not in ("payload", "payload_b64")}
            if o.get("stream_id") == 0 and "ACK" in o.get("flags", [])
            else o
        ),
    )


def hb_size_unchecked() -> None:  # a heartbeat over 64 bytes answered (ATP-TIME-003: ETOOBIG)
    from atp_proto.frames import _receiving

    orig = _receiving.validate_frame

    def validate(frame: Any, limits: Any = None) -> None:
        if frame.type == FrameType.DATA and frame.stream_id == 0 and limits is not None:
            limits = dataclasses.replace(limits, max_hb_payload=1 << 20)
        if limits is None:
            orig(frame)
        else:
            orig(frame, limits)

    _receiving.validate_frame = validate


def hb_ack_answered() -> None:  # a heartbeat reply answered with a reply (ATP-TIME-006)
    from atp_proto.frames import _control
    from atp_proto.frames._types import Flags

    orig = _control.ControlMixin._handle_heartbeat

    def handle(self: Any, frame: Any, now: float, events: Any) -> None:
        orig(self, frame, now, events)
        if frame.flags & _ACK:
            ack = Frame(FrameType.DATA, Flags.HB | Flags.ACK, 0, payload=bytes(frame.payload))
            self._queue(ack, self._out_encoding)

    _control.ControlMixin._handle_heartbeat = handle  # type: ignore[method-assign]


def error_answered() -> None:  # an ERROR on a stream never opened answered with an ERROR
    # (ATP-ERR-011)

    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            sid = frame.stream_id
            if sid and sid not in self._streams and sid > self._highest_id:
                raise self._never_opened("ERROR", sid)
            orig(self, frame, cost, now, events, enc)

        return handle

    _handler(FrameType.ERROR, make)


def unknown_code_ignored() -> None:  # an ERROR with a code the router does not know leaves
    # its stream open (ATP-ERR-003)
    _unknown_code_dropped(on_stream=True)


def session_error_unknown_kept() -> None:  # an ERROR on stream 0 with an unknown code does
    # not end the session (ATP-ERR-007)
    _unknown_code_dropped(on_stream=False)


def _unknown_code_dropped(*, on_stream: bool) -> None:
    from atp_proto.frames._types import ErrorCode

    known = {str(c) for c in ErrorCode}

    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            if bool(frame.stream_id) is on_stream and frame.ext["error"]["code"] not in known:
                return
            orig(self, frame, cost, now, events, enc)

        return handle

    _handler(FrameType.ERROR, make)


def wu_never_opened_ignored() -> None:  # a WINDOW_UPDATE on a stream never opened dropped
    # (ATP-STREAM-013: EPROTO)

    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            if frame.stream_id not in self._streams:
                return
            orig(self, frame, cost, now, events, enc)

        return handle

    _handler(FrameType.WINDOW_UPDATE, make)


def budget_update_taken() -> None:  # a client's BUDGET_UPDATE ignored (ATP-FRAME-014: EPROTO)

    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            return None

        return handle

    _handler(FrameType.BUDGET_UPDATE, make)


def max_streams_no_retry_after() -> None:  # a SYN past max_streams refused with EWINDOW but
    # no retry_after_ms (ATP-STREAM-008)
    from atp_proto.frames import _base

    orig = _base.ConnectionBase._stream_error

    def stream_error(self: Any, exc: Any, events: Any) -> None:
        if "max_streams" in exc.message:
            exc.retry_after_ms = None
        orig(self, exc, events)

    _base.ConnectionBase._stream_error = stream_error  # type: ignore[method-assign]


def session_id_not_echoed() -> None:  # text frames without the client's session_id
    # (ATP-JSON-007)
    _wire(lambda f: f, lambda o: {k: v for k, v in o.items() if k != "session_id"})


def alias_not_echoed() -> None:  # replies on an alias stream name its numeric id instead
    # (ATP-JSON-016 / ATP-JSON-002)
    def text(o: dict[str, Any]) -> dict[str, Any]:
        if isinstance(o.get("stream_id"), str) and "stream_num" in o:
            o = dict(o, stream_id=o["stream_num"])
        return o

    _wire(lambda f: f, text)


def json_last_key_wins() -> None:  # a duplicate key inside a text frame: the last one wins
    # (ATP-JSON-017)
    from atp_proto.frames import _json

    orig = _json.JsonMapping._from_obj

    def from_obj(self: Any, obj: Any, duplicate: str | None) -> Any:
        return orig(self, obj, None)

    _json.JsonMapping._from_obj = from_obj  # type: ignore[method-assign]


def task_types_ignored() -> None:  # the token's task_types claim never checked (ATP-SEC-004)
    from atp_proto.router import auth

    auth.Principal.allows = lambda self, task_type: True  # type: ignore[method-assign]


def lane_not_capped() -> None:  # the token's max_qos claim never caps the lane (ATP-SEC-004)
    from atp_proto.router import auth

    auth.Principal.cap_qos = lambda self, qos: qos  # type: ignore[method-assign]


def missing_token_anonymous() -> None:  # a handshake without a token served as anonymous
    # (ATP-SEC-001)
    from atp_proto.router import auth

    orig = auth.Authenticator.authenticate

    def authenticate(self: Any, token: str | None) -> Any:
        return auth.ANONYMOUS if not token else orig(self, token)

    auth.Authenticator.authenticate = authenticate  # type: ignore[method-assign]


def qos_zero_bronze() -> None:  # a SYN's qos 0 run in the bronze lane (ATP-FRAME-017: silver)
    from atp_proto.frames import _receiving
    from atp_proto.frames._types import QoS

    orig = _receiving.ReceiveMixin._accept_stream

    def accept(self: Any, frame: Any, now: float, encoding: Any) -> Any:
        rec = orig(self, frame, now, encoding)
        if not frame.qos:
            rec.qos = QoS.BRONZE
        return rec

    _receiving.ReceiveMixin._accept_stream = accept  # type: ignore[method-assign]


VARIANTS: dict[str, Callable[[], None]] = {
    "seq-from-one": seq_from_one,
    "cont-never-set": cont_never_set,
    "credit-unchecked": credit_unchecked,
    "message-size-unchecked": message_size_unchecked,
    "hb-ack-empty": hb_ack_empty,
    "hb-size-unchecked": hb_size_unchecked,
    "hb-ack-answered": hb_ack_answered,
    "error-answered": error_answered,
    "unknown-code-ignored": unknown_code_ignored,
    "session-error-unknown-kept": session_error_unknown_kept,
    "wu-never-opened-ignored": wu_never_opened_ignored,
    "budget-update-taken": budget_update_taken,
    "max-streams-no-retry-after": max_streams_no_retry_after,
    "session-id-not-echoed": session_id_not_echoed,
    "alias-not-echoed": alias_not_echoed,
    "json-last-key-wins": json_last_key_wins,
    "task-types-ignored": task_types_ignored,
    "lane-not-capped": lane_not_capped,
    "missing-token-anonymous": missing_token_anonymous,
    "qos-zero-bronze": qos_zero_bronze,
}


def ws_close_normal() -> None:  # a connection error closes the WebSocket with 1000, not the
    # code's close code (ATP-ERR-002)
    from atp_proto.transports import ws_server

    async def close_with_error(self: Any, code: Any, reason: str) -> None:
        await self.close(1000, reason[:120])

    ws_server.WsConnection.close_with_error = close_with_error  # type: ignore[method-assign]


VARIANTS["ws-close-normal"] = ws_close_normal


def hb_not_activity() -> None:  # only frames other than heartbeats restart the idle timer
    # (ATP-TIME-008)
    from atp_proto.frames import _control, _receiving

    handle_frame = _receiving.ReceiveMixin._handle_frame
    handle_hb = _control.ControlMixin._handle_heartbeat

    def frame(self: Any, f: Any, cost: int, now: float, events: Any, enc: Any) -> None:
        if f.stream_id or f.type != FrameType.DATA:
            self._last_activity = now
        handle_frame(self, f, cost, now, events, enc)

    def heartbeat(self: Any, f: Any, now: float, events: Any) -> None:
        self._last_recv = getattr(self, "_last_activity", self._last_recv)
        self.timer_stale = True
        handle_hb(self, f, now, events)

    _receiving.ReceiveMixin._handle_frame = frame  # type: ignore[method-assign]
    _control.ControlMixin._handle_heartbeat = heartbeat  # type: ignore[method-assign]


VARIANTS["hb-not-activity"] = hb_not_activity


def wu_stream0_ignored() -> None:  # a WINDOW_UPDATE on stream 0 dropped (ATP-FRAME-012:
    # a connection error EPROTO)
    from atp_proto.frames import _validate

    orig = _validate._check_window_update

    def check(ext: Any, sid: int) -> None:
        if sid:
            orig(ext, sid)

    _validate._check_window_update = check


def float_header_truncated() -> None:  # a header field 1.5 read as 1 (ATP-JSON-010)
    from atp_proto.frames import _json

    orig = _json._uint

    def uint(obj: Any, key: str, hi: int, default: int, sid: int) -> int:
        value = obj.get(key)
        if isinstance(value, float) and value >= 0:
            obj = dict(obj, **{key: int(value)})
        return orig(obj, key, hi, default, sid)

    _json._uint = uint


def data_after_fin_dropped() -> None:  # DATA after the client's FIN discarded
    # (ATP-STREAM-005: EPROTO)
    from atp_proto.frames import _receiving
    from atp_proto.frames._errors import RemoteProtocolError

    orig = _receiving.ReceiveMixin._data_outside_stream

    def outside(self: Any, frame: Any, rec: Any, now: float, events: Any, enc: Any) -> Any:
        try:
            return orig(self, frame, rec, now, events, enc)
        except RemoteProtocolError as exc:
            if "after the peer's FIN" in exc.message:
                return None
            raise

    _receiving.ReceiveMixin._data_outside_stream = outside  # type: ignore[method-assign]


def invalid_argument_unmapped() -> None:  # INVALID_ARGUMENT taken as "any other status":
    # EAGENTDOWN (ATP-ADAPT-011: EPROTO)
    from atp_proto.adapters.grpc.status import GRPC_TO_ATP, GrpcStatus

    GRPC_TO_ATP.pop(GrpcStatus.INVALID_ARGUMENT, None)


def no_window_update() -> None:  # the router never returns credit (ATP-FLOW-012)
    _wire(
        lambda f: None if f.type == FrameType.WINDOW_UPDATE else f,
        lambda o: None if o.get("type") == "WINDOW_UPDATE" else o,
    )


def alg_none_accepted() -> None:  # a token of alg none accepted unverified (ATP-SEC-002)
    from atp_proto.router import auth

    orig = auth.decode_token

    def decode(token: str, key: Any, algorithms: list[str], **kw: Any) -> Any:
        if auth.jwt.get_unverified_header(token).get("alg") == "none":
            claims: dict[str, Any] = auth.jwt.decode(token, options={"verify_signature": False})
            return claims
        return orig(token, key, algorithms, **kw)

    auth.decode_token = decode


VARIANTS.update(
    {
        "wu-stream0-ignored": wu_stream0_ignored,
        "float-header-truncated": float_header_truncated,
        "data-after-fin-dropped": data_after_fin_dropped,
        "invalid-argument-unmapped": invalid_argument_unmapped,
        "no-window-update": no_window_update,
        "alg-none-accepted": alg_none_accepted,
    }
)


def client_syn_ignored() -> None:  # a SYN from the router dropped by the client
    # (ATP-STREAM-006: EPROTO)
    from atp_proto.frames import _receiving

    orig = _receiving.ReceiveMixin._data_outside_stream

    def outside(self: Any, frame: Any, rec: Any, now: float, events: Any, enc: Any) -> Any:
        if rec is None and frame.flags & 0x01:
            return None
        return orig(self, frame, rec, now, events, enc)

    _receiving.ReceiveMixin._data_outside_stream = outside  # type: ignore[method-assign]


def client_budget_update_refused() -> None:  # the client refuses the router's BUDGET_UPDATE
    # with EPROTO, as a router must refuse a client's (ATP-FRAME-014)
    from atp_proto.frames._errors import RemoteProtocolError
    from atp_proto.frames._types import ErrorCode

    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            raise RemoteProtocolError(
                ErrorCode.EPROTO, "BUDGET_UPDATE refused", stream_id=frame.stream_id
            )

        return handle

    _handler(FrameType.BUDGET_UPDATE, make)


def client_drain_ignored() -> None:  # EDRAINING on stream 0 ignored: the client goes on
    # opening streams on the session (ATP-SESS-006)
    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            if not frame.stream_id and frame.ext["error"]["code"] == "EDRAINING":
                return
            orig(self, frame, cost, now, events, enc)

        return handle

    _handler(FrameType.ERROR, make)


#: the client testee's variants (client_variant.py)
CLIENT_VARIANTS: dict[str, Callable[[], None]] = {
    "client-hb-ack-empty": hb_ack_empty,
    "client-syn-ignored": client_syn_ignored,
    "client-budget-update-refused": client_budget_update_refused,
    "client-drain-ignored": client_drain_ignored,
    "client-cont-never-set": cont_never_set,
}


def bad_window_unlimited() -> None:  # a SYN window field that is no unsigned integer read
    # as "no limit" (ATP-BUDGET-008: EPROTO)
    from collections.abc import Mapping

    from atp_proto.frames import _validate

    _validate.valid_window = lambda raw: isinstance(raw, Mapping)


def preflight_unchecked() -> None:  # work starts whatever the estimate: only usage, as it
    # comes, is held to the window (ATP-BUDGET-002)
    from atp_proto.router import budget

    budget.BudgetLedger.fits = lambda self, tokens, usd_micros: True  # type: ignore[method-assign]


VARIANTS.update(
    {"bad-window-unlimited": bad_window_unlimited, "preflight-unchecked": preflight_unchecked}
)


def stream_error_ends_session() -> None:  # every stream error taken as fatal: the session
    # ends with it, its other streams too (ATP-ERR-005, ATP-ERR-001)
    from atp_proto.frames import _base

    def stream_error(self: Any, exc: Any, events: Any) -> None:
        exc.stream_id = 0
        self._connection_error(exc, events)

    _base.ConnectionBase._stream_error = stream_error  # type: ignore[method-assign]


VARIANTS["stream-error-ends-session"] = stream_error_ends_session


# -- session 8: MUSTs no variant broke before (test_router_mutations.py) ---------------


def _outside(make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Wrap the receive path's ``_data_outside_stream`` (RST, SYN, frames for streams that
    cannot take them): several variants chain their wrappers in one process."""
    from atp_proto.frames import _receiving

    cls = _receiving.ReceiveMixin
    cls._data_outside_stream = make(cls._data_outside_stream)  # type: ignore[method-assign]


def rst_ignored() -> None:  # a client's RST on an open stream dropped: the stream runs on
    # (ATP-FLAG-003)
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def outside(self: Any, frame: Any, rec: Any, now: float, events: Any, enc: Any) -> Any:
            if frame.flags & 0x10 and rec is not None and not rec.closed:
                return None
            return orig(self, frame, rec, now, events, enc)

        return outside

    _outside(make)


def syn_on_open_ignored() -> None:  # a second SYN on an open stream dropped
    # (ATP-STREAM-004: EPROTO)
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def outside(self: Any, frame: Any, rec: Any, now: float, events: Any, enc: Any) -> Any:
            if frame.flags & 0x01 and rec is not None:
                return None
            return orig(self, frame, rec, now, events, enc)

        return outside

    _outside(make)


def data_never_opened_dropped() -> None:  # a non-SYN DATA on a stream never opened dropped
    # (ATP-STREAM-003: EPROTO)
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def outside(self: Any, frame: Any, rec: Any, now: float, events: Any, enc: Any) -> Any:
            if rec is None and not frame.flags & 0x11 and frame.stream_id > self._highest_id:
                return None
            return orig(self, frame, rec, now, events, enc)

        return outside

    _outside(make)


def caps_answered_always() -> None:  # every CAPABILITIES answered, not only the first
    # (ATP-SESS-010)

    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            again = self._peer_sent_caps
            orig(self, frame, cost, now, events, enc)
            if again:
                self._queue(self._caps_frame(), enc)

        return handle

    _handler(FrameType.CAPABILITIES, make)


def null_payload_refused() -> None:  # a text frame's "payload": null refused as malformed,
    # a stream error EPROTO (ATP-JSON-012: an empty payload)
    from atp_proto.frames import _json

    orig = _json.JsonMapping._from_obj

    def from_obj(self: Any, obj: Any, duplicate: str | None) -> Any:
        if "payload" in obj and obj["payload"] is None:
            obj = {k: v for k, v in obj.items() if k != "payload"}
            obj["payload_b64"] = None  # "not a string": EPROTO on the frame's stream
        return orig(self, obj, duplicate)

    _json.JsonMapping._from_obj = from_obj  # type: ignore[method-assign]


def alias_below_numeric() -> None:  # alias ids counted apart from the numeric ids the
    # client used: an alias may be given an id below them (ATP-JSON-014)
    from atp_proto.frames import _json

    _json.JsonMapping.note_stream_id = lambda self, stream_id: None  # type: ignore[method-assign]


def alias_reuse_refused() -> None:  # a SYN under an alias whose stream has closed is
    # taken for that closed stream, so refused (ATP-JSON-003: a new stream)
    from atp_proto.frames import _json

    orig = _json.JsonMapping._resolve

    def resolve(self: Any, raw: object, syn: bool) -> int:
        if syn and isinstance(raw, str) and raw in self._retired:
            return int(self._retired[raw])
        return int(orig(self, raw, syn))

    _json.JsonMapping._resolve = resolve  # type: ignore[method-assign]


def wu_with_window() -> None:  # the router's WINDOW_UPDATE carries a window
    # (ATP-FRAME-021)
    _wire(
        lambda f: (
            _frame(f, ext=dict(f.ext, window={"max_parallel": 1}))
            if f.type == FrameType.WINDOW_UPDATE and f.stream_id
            else f
        ),
        lambda o: dict(o, window={"max_parallel": 1}) if o.get("type") == "WINDOW_UPDATE" else o,
    )


def error_held_behind_credit() -> None:  # a stream error's ERROR held behind the stream's
    # output waiting for credit, which never comes (ATP-FLOW-009)
    from atp_proto.frames import _base

    orig = _base.ConnectionBase._stream_error

    def stream_error(self: Any, exc: Any, events: Any) -> None:
        rec = self._streams.get(exc.stream_id)
        if rec is None or not rec.send.outbox_bytes:
            orig(self, exc, events)
            return
        self._queue = lambda frame, enc: None  # held: nothing goes out for the stream
        try:
            orig(self, exc, events)
        finally:
            del self._queue

    _base.ConnectionBase._stream_error = stream_error  # type: ignore[method-assign]


VARIANTS.update(
    {
        "rst-ignored": rst_ignored,
        "syn-on-open-ignored": syn_on_open_ignored,
        "data-never-opened-dropped": data_never_opened_dropped,
        "caps-answered-always": caps_answered_always,
        "null-payload-refused": null_payload_refused,
        "alias-below-numeric": alias_below_numeric,
        "alias-reuse-refused": alias_reuse_refused,
        "wu-with-window": wu_with_window,
        "error-held-behind-credit": error_held_behind_credit,
    }
)


def _validation(skip: Callable[[Any], bool]) -> None:
    """The receive path's stateless checks (validate_frame) skipped for frames ``skip``
    picks: the handlers then take them as they come."""
    from atp_proto.frames import _receiving

    orig = _receiving.validate_frame

    def validate(frame: Any, limits: Any = None) -> None:
        if skip(frame):
            return
        if limits is None:
            orig(frame)
        else:
            orig(frame, limits)

    _receiving.validate_frame = validate


def stream0_data_as_heartbeat() -> None:  # DATA on stream 0 without HB answered as a
    # heartbeat (ATP-FRAME-011: a connection error EPROTO)
    _validation(lambda f: f.type == FrameType.DATA and not f.stream_id and not f.flags & 0x20)


def wu_empty_ignored() -> None:  # a WINDOW_UPDATE with neither credit nor window taken as
    # a no-op (ATP-FRAME-019: a stream error EPROTO)
    _validation(
        lambda f: (
            f.type == FrameType.WINDOW_UPDATE
            and f.stream_id
            and f.ext.get("credit") is None
            and f.ext.get("window") is None
        )
    )


def qos_clamped() -> None:  # a qos above 3 read as bronze (ATP-FRAME-007: EPROTO)
    from atp_proto.frames import _codec
    from atp_proto.frames._types import QoS

    for value in range(4, 256):
        _codec._QOS[value] = QoS.BRONZE


def other_version_taken() -> None:  # a CAPABILITIES whose versions lack 1 taken
    # (ATP-SESS-003)
    _caps_versions(lambda versions: isinstance(versions, list) and bool(versions))


def versions_optional() -> None:  # a CAPABILITIES without versions taken as "version 1"
    # (ATP-SESS-017)
    _caps_versions(lambda versions: versions is None)


def _caps_versions(take: Callable[[Any], bool]) -> None:
    from collections.abc import Mapping

    from atp_proto.frames import _validate

    orig = _validate._check_capabilities

    def check(ext: Any, sid: int) -> None:
        caps = ext.get("caps")
        if not sid and isinstance(caps, Mapping) and take(caps.get("versions")):
            return
        orig(ext, sid)

    _validate._check_capabilities = check


def unknown_type_fatal() -> None:  # a frame of an unknown type is a connection error
    # (ATP-FRAME-010: ignored)
    from atp_proto.frames import _receiving
    from atp_proto.frames._errors import RemoteProtocolError
    from atp_proto.frames._types import ErrorCode

    cls = _receiving.ReceiveMixin
    orig = cls._handle_frame

    def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
        if frame.type not in cls._HANDLERS:
            raise RemoteProtocolError(ErrorCode.EPROTO, f"unknown frame type {frame.type}")
        orig(self, frame, cost, now, events, enc)

    cls._handle_frame = handle  # type: ignore[method-assign]


def unknown_ext_refused() -> None:  # an ext key the router does not know (a vendor's
    # x_...) refused with EPROTO (ATP-EXT-001: ignored)
    from atp_proto.frames._errors import RemoteProtocolError
    from atp_proto.frames._types import ErrorCode

    def skip(frame: Any) -> bool:
        vendor = [k for k in frame.ext if k.startswith(("x_", "x-"))] if frame.ext else []
        if vendor and frame.stream_id:
            raise RemoteProtocolError(
                ErrorCode.EPROTO, f"unknown ext key {vendor[0]!r}", stream_id=frame.stream_id
            )
        return False

    _validation(skip)


def error_without_rst_ignored() -> None:  # an ERROR on a stream without RST taken as a
    # notice: the stream runs on (ATP-FRAME-022)
    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            if frame.stream_id in self._streams and not frame.flags & 0x10:
                return  # (a never-opened stream's ERROR goes its way: ATP-ERR-011)
            orig(self, frame, cost, now, events, enc)

        return handle

    _handler(FrameType.ERROR, make)


def refusal_echoes_token() -> None:  # a refused handshake's answer quotes the token
    # (ATP-SEC-005, ATP-ERR-006)
    from atp_proto.router import auth

    orig = auth.Authenticator.authenticate

    def authenticate(self: Any, token: str | None) -> Any:
        try:
            return orig(self, token)
        except auth.AuthError as exc:
            raise auth.AuthError(exc.status, f"{exc.message}: {token}") from None

    auth.Authenticator.authenticate = authenticate  # type: ignore[method-assign]


VARIANTS.update(
    {
        "stream0-data-as-heartbeat": stream0_data_as_heartbeat,
        "wu-empty-ignored": wu_empty_ignored,
        "qos-clamped": qos_clamped,
        "other-version-taken": other_version_taken,
        "versions-optional": versions_optional,
        "unknown-type-fatal": unknown_type_fatal,
        "unknown-ext-refused": unknown_ext_refused,
        "error-without-rst-ignored": error_without_rst_ignored,
        "refusal-echoes-token": refusal_echoes_token,
    }
)


def no_cut_to_credit() -> None:  # fragments as large as the peer's max_frame_size (the
    # SHOULD of ATP-SEQ-008 not kept: allowed), and one longer than the credit waits for
    # credit for all of it, never cut to the credit there is (ATP-FLOW-013)
    from atp_proto.frames import _caps, _windows

    _caps.frag_size = lambda peer_frame_size, peer_initial_window: peer_frame_size
    _windows.SendWindow._cut_head = lambda self, text_cost: False  # type: ignore[method-assign]


VARIANTS["no-cut-to-credit"] = no_cut_to_credit


def tiny_window_served() -> None:  # a stream whose window cannot carry the FINAL's
    # telemetry is run anyway, its answer refused only at the end (ATP-FLOW-014: refused at
    # the SYN, before any adapter call)
    from atp_proto.router.routing import run

    run.MIN_FINAL_EXT = 0


VARIANTS["tiny-window-served"] = tiny_window_served


def syn_credit_kept() -> None:  # the SYN message is never counted as consumed: its credit
    # does not come back (ATP-FLOW-010)
    from atp_proto.frames import _stream
    from atp_proto.frames._events import StreamOpened

    orig = _stream.Stream.receive_general

    def receive_general(self: Any, frame: Any, cost: int, max_message_size: int) -> Any:
        event, consumed = orig(self, frame, cost, max_message_size)
        return event, 0 if isinstance(event, StreamOpened) else consumed

    _stream.Stream.receive_general = receive_general  # type: ignore[method-assign]


VARIANTS["syn-credit-kept"] = syn_credit_kept


def wu_bad_window_ignored() -> None:  # a WINDOW_UPDATE whose window is not a map taken as
    # one without a window (ATP-FRAME-020: a stream error EPROTO)
    from collections.abc import Mapping

    from atp_proto.frames import _validate

    orig = _validate._check_window_update

    def check(ext: Any, sid: int) -> None:
        if sid and "window" in ext and not isinstance(ext["window"], Mapping):
            return
        orig(ext, sid)

    _validate._check_window_update = check


def wu_after_end_refused() -> None:  # a WINDOW_UPDATE for a stream that has ended answered
    # with EPROTO (ATP-FLAG-004: discarded)
    from atp_proto.frames._errors import RemoteProtocolError
    from atp_proto.frames._types import ErrorCode

    def make(orig: Callable[..., None]) -> Callable[..., None]:
        def handle(self: Any, frame: Any, cost: int, now: float, events: Any, enc: Any) -> None:
            sid = frame.stream_id
            if sid not in self._streams and 0 < sid <= self._highest_id:
                raise RemoteProtocolError(
                    ErrorCode.EPROTO, f"WINDOW_UPDATE on ended stream {sid}", stream_id=sid
                )
            orig(self, frame, cost, now, events, enc)

        return handle

    _handler(FrameType.WINDOW_UPDATE, make)


VARIANTS.update(
    {"wu-bad-window-ignored": wu_bad_window_ignored, "wu-after-end-refused": wu_after_end_refused}
)


def session_id_unchecked() -> None:  # an ext session_id that is no text, or too long,
    # taken (ATP-EXT-010: a stream error EPROTO)
    from atp_proto.frames import _validate

    _validate._check_session_id = lambda ext, sid, limits: None


def bare_rst_never_opened_dropped() -> None:  # a bare RST on a stream id never opened
    # discarded, as one on a closed stream (ATP-FLAG-009: EPROTO)
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def outside(self: Any, frame: Any, rec: Any, now: float, events: Any, enc: Any) -> Any:
            if frame.flags & 0x10 and rec is None:
                return None
            return orig(self, frame, rec, now, events, enc)

        return outside

    _outside(make)


VARIANTS.update(
    {
        "session-id-unchecked": session_id_unchecked,
        "bare-rst-never-opened-dropped": bare_rst_never_opened_dropped,
    }
)
