"""A deliberately broken router: ``python router_variant.py NAME [atp serve ARGS]``.

Each variant patches one thing of the reference router, then runs ``atp serve`` in this
process, so the conformance suite meets a REAL router process that is wrong in exactly
one way (issue 11 item 6). Wire variants rewrite the frames the router sends, just before
they reach the socket; the others patch the one method the fault lives in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from atp_proto.frames import Frame, FrameType, decode_frames, encode_frames
from atp_proto.transports import ws_server

FIN, MORE = 0x08, 0x04


def _frame(f: Frame, **changes: Any) -> Frame:
    fields = {
        k: getattr(f, k)
        for k in (
            "type",
            "flags",
            "stream_id",
            "msg_seq",
            "frag_seq",
            "qos",
            "ttl",
            "ext",
            "payload",
            "version",
        )
    }
    fields.update(changes)
    return Frame(**fields)


def _wire(
    binary: Callable[[Frame], Frame | None], text: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> None:
    """Rewrite every message the router sends (binary frames and text frames)."""

    def mutate(message: bytes | str) -> bytes | str:
        if isinstance(message, str):
            obj = json.loads(message)
            out = text(obj)
            return json.dumps(out) if out is not None else json.dumps({"type": 200})
        frames = [g for g in (binary(f) for f in decode_frames(bytes(message))) if g is not None]
        return encode_frames(frames) if frames else encode_frames([Frame(type=200)])

    send, try_send = ws_server.WsConnection.send, ws_server.WsConnection.try_send

    async def patched_send(self: Any, message: bytes | str) -> None:
        await send(self, mutate(message))

    def patched_try_send(self: Any, message: bytes | str) -> bool:
        return try_send(self, mutate(message))

    ws_server.WsConnection.send = patched_send  # type: ignore[method-assign]
    ws_server.WsConnection.try_send = patched_try_send  # type: ignore[method-assign]


def _is_data(f: Frame) -> bool:
    return f.type == FrameType.DATA and f.stream_id != 0


def ignore_credit() -> None:
    from atp_proto.frames import _windows

    orig = _windows.SendWindow.sendable

    def sendable(self: Any, text_cost: Any = None) -> Any:
        self.credit = 1 << 40  # as if the client had granted unlimited credit
        return orig(self, text_cost)

    _windows.SendWindow.sendable = sendable  # type: ignore[method-assign]


def reuse_seq() -> None:  # the FINAL repeats the previous message's msg_seq
    _wire(
        lambda f: (
            _frame(f, msg_seq=f.msg_seq - 1)
            if _is_data(f) and f.flags & FIN and f.msg_seq > 2
            else f
        ),
        lambda o: (
            dict(o, msg_seq=o["msg_seq"] - 1)
            if "FIN" in o.get("flags", []) and o.get("msg_seq", 0) > 2
            else o
        ),
    )


def skip_seq() -> None:  # the FINAL skips one msg_seq
    _wire(
        lambda f: _frame(f, msg_seq=f.msg_seq + 1) if _is_data(f) and f.flags & FIN else f,
        lambda o: dict(o, msg_seq=o.get("msg_seq", 0) + 1) if "FIN" in o.get("flags", []) else o,
    )


def drop_fin() -> None:  # the FINAL goes out with MORE instead of FIN
    _wire(
        lambda f: _frame(f, flags=(f.flags & ~FIN) | MORE) if _is_data(f) and f.flags & FIN else f,
        lambda o: (
            dict(o, flags=[x for x in o.get("flags", []) if x != "FIN"] + ["MORE"])
            if "FIN" in o.get("flags", [])
            else o
        ),
    )


def drop_telemetry() -> None:
    _wire(
        lambda f: (
            _frame(f, ext={k: v for k, v in f.ext.items() if k != "telemetry"})
            if "telemetry" in f.ext
            else f
        ),
        lambda o: {k: v for k, v in o.items() if k != "telemetry"},
    )


def _recode(err: dict[str, Any]) -> dict[str, Any]:
    return dict(err, code="EINTERNAL") if err.get("code") in ("EPROTO", "ESEQ_RETRY") else err


def wrong_error_code() -> None:  # protocol violations answered with EINTERNAL
    _wire(
        lambda f: (
            _frame(f, ext=dict(f.ext, error=_recode(dict(f.ext["error"]))))
            if f.type == FrameType.ERROR
            else f
        ),
        lambda o: dict(o, error=_recode(o["error"])) if o.get("type") == "ERROR" else o,
    )


def no_error_answer() -> None:  # ERROR frames never sent
    _wire(
        lambda f: None if f.type == FrameType.ERROR else f,
        lambda o: None if o.get("type") == "ERROR" else o,
    )


def accept_expired() -> None:
    from atp_proto.router import auth

    orig = auth.jwt.decode

    def decode(*args: Any, **kw: Any) -> Any:
        kw["options"] = dict(kw.get("options") or {}, verify_exp=False)
        return orig(*args, **kw)

    auth.jwt.decode = decode  # type: ignore[assignment]


def no_cancel_on_reset() -> None:
    from atp_proto.frames import StreamReset
    from atp_proto.session import session

    orig = session.Session._dispatch

    def dispatch(self: Any, events: list[Any]) -> None:
        orig(self, [e for e in events if not (isinstance(e, StreamReset) and e.by_peer)])

    session.Session._dispatch = dispatch  # type: ignore[method-assign]


def hang_on_stall() -> None:  # no ttl timer, no call deadline
    from atp_proto.frames import _connection
    from atp_proto.router.routing import run

    _connection.expired = lambda streams, now: []  # type: ignore[attr-defined]
    run.TTL_GRACE_MS = 10**8


def bronze_starves_gold() -> None:  # every stream waits in the bronze lane: FIFO
    from atp_proto.frames import QoS
    from atp_proto.router import admission

    orig = admission.Admission.acquire

    async def acquire(self: Any, lane: Any) -> None:
        await orig(self, QoS.BRONZE)

    admission.Admission.acquire = acquire  # type: ignore[method-assign]


def _no_decision_id(tel: Any) -> Any:
    return {k: v for k, v in tel.items() if k != "decision_id"} if isinstance(tel, dict) else tel


def no_decision_id() -> None:  # the FINAL's telemetry without decision_id (ATP-FEED-001)
    _wire(
        lambda f: (
            _frame(f, ext=dict(f.ext, telemetry=_no_decision_id(dict(f.ext["telemetry"]))))
            if "telemetry" in f.ext
            else f
        ),
        lambda o: dict(o, telemetry=_no_decision_id(o["telemetry"])) if "telemetry" in o else o,
    )


def quorum_of_one() -> None:  # meta.quorum ignored: one answer is a quorum (ATP-STRAT-002)
    from atp_proto.router.routing import execute

    orig = execute.pick_quorum

    def pick_quorum(done: Any, k: int, comparator: str) -> Any:
        return orig(done, 1, comparator)

    execute.pick_quorum = pick_quorum  # type: ignore[assignment]


def ignore_comparator() -> None:  # every comparator taken as exact (ATP-STRAT-003)
    from atp_proto.router.routing import strategies

    orig = strategies.answer_key

    def answer_key(text: str, comparator: str) -> Any:
        return orig(text, "exact")

    strategies.answer_key = answer_key  # type: ignore[assignment]


VARIANTS: dict[str, Callable[[], None]] = {
    "ignore-comparator": ignore_comparator,
    "no-decision-id": no_decision_id,
    "quorum-of-one": quorum_of_one,
    "bronze-starves-gold": bronze_starves_gold,
    "ignore-credit": ignore_credit,
    "reuse-seq": reuse_seq,
    "skip-seq": skip_seq,
    "drop-fin": drop_fin,
    "drop-telemetry": drop_telemetry,
    "wrong-error-code": wrong_error_code,
    "no-error-answer": no_error_answer,
    "accept-expired": accept_expired,
    "no-cancel-on-reset": no_cancel_on_reset,
    "hang-on-stall": hang_on_stall,
}

# the variants of the router-gaps cases and the handshake cases
from gaps_variants import VARIANTS as _GAPS_VARIANTS  # noqa: E402

VARIANTS.update(_GAPS_VARIANTS)
# the variants of the estimate-reuse cases (ATP-BUDGET-018/019)
from estimate_variants import VARIANTS as _ESTIMATE_VARIANTS  # noqa: E402

VARIANTS.update(_ESTIMATE_VARIANTS)
# the variants of the spec points the independent client found unclear
from specgaps_variants import VARIANTS as _SPECGAPS_VARIANTS  # noqa: E402

VARIANTS.update(_SPECGAPS_VARIANTS)
# the variants of the MUSTs no other variant broke (test_router_mutations.py)
from mutation_variants import VARIANTS as _MUTATION_VARIANTS  # noqa: E402

VARIANTS.update(_MUTATION_VARIANTS)
# the variants of a FINAL that does not repeat a streamed answer (ATP-FINAL-001..003)
from final_variants import VARIANTS as _FINAL_VARIANTS  # noqa: E402

VARIANTS.update(_FINAL_VARIANTS)

# session 9's: faults the vectors on a stream never opened let through, and three MUSTs
from hollow_variants import VARIANTS as _HOLLOW_VARIANTS  # noqa: E402

VARIANTS.update(_HOLLOW_VARIANTS)

if __name__ == "__main__":
    VARIANTS[sys.argv[1]]()
    from atp_proto.cli import main

    sys.exit(main(["serve", *sys.argv[2:]]))
