"""The invariants every router exchange must keep, checked on everything a scenario
received (each with its requirement ID), and a case's verdict from them
(:func:`result_of`), for :mod:`conformance.scenario`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conformance._record import Recorder
from conformance._scenario_runner import Runner, ScenarioFailed, _ended
from conformance.model import CaseResult, Level

__all__ = ["invariants", "result_of"]


def invariants(r: Runner) -> list[tuple[str, str]]:
    """(requirement ID, what was wrong) for every invariant the received frames break."""
    out: list[tuple[str, str]] = []
    next_seq: dict[Any, int] = {}
    in_message: dict[Any, bool] = {}
    ended: set[Any] = set()
    ended_at: dict[Any, int] = {}  #: the index of each stream's end among r.s.frames
    first_fragment: dict[Any, Mapping[str, Any]] = {}  #: ext is only on frag_seq 0
    spent: dict[Any, int] = {}
    #: each stream's last DATA frame: (msg_seq, frag_seq, CONT set)
    last_frag: dict[Any, tuple[Any, Any, bool]] = {}
    for index, f in enumerate(r.s.frames):
        t, sid, flags = f.get("type"), f.get("stream_id"), f.get("flags") or []
        if t == "UNDECODABLE":
            out.append(("ATP-FRAME-001", f"an undecodable message: {f.get('why')}"))
            continue
        if f.get("v", 1) != 1:
            out.append(("ATP-FRAME-002", f"version {f.get('v')}"))
        if isinstance(sid, int) and sid & 0x80000000:
            out.append(("ATP-FRAME-004", "the reserved stream-id bit set"))
        if f.get("raw_flags", 0) & 0x80:
            out.append(("ATP-FLAG-001", "a reserved flag bit set"))
        control = t in ("WINDOW_UPDATE", "CAPABILITIES", "ERROR", "BUDGET_UPDATE") or "HB" in flags
        if control and (f.get("msg_seq") or f.get("frag_seq")):
            out.append(("ATP-FRAME-018", f"{t} with msg_seq {f.get('msg_seq')}"))
        if t == "WINDOW_UPDATE" and "window" in f:
            out.append(("ATP-FRAME-021", "the router sent a window in WINDOW_UPDATE"))
        if isinstance(t, int):  # a type beyond the five of §4, never negotiated here
            out.append(("ATP-EXT-006", f"the router sent a frame of type {t}"))
        if sid in ended and ended_at[sid] < r.syn_from.get(sid, -1) <= index:
            # the client sent a new SYN on the used id after the end: what follows answers
            # that SYN (router.stream.syn-on-closed-id), not the ended stream
            ended.discard(sid)
            next_seq.pop(sid, None)
            spent.pop(sid, None)
        if sid in ended and t in ("DATA", "ERROR") and sid != 0:
            out.append(("ATP-STREAM-011", f"a frame on stream {sid} after its end"))
        if t == "DATA" and sid not in (0, None):
            if "SYN" in flags:
                out.append(("ATP-STREAM-006", "the router sent a SYN"))
            if not f.get("frag_seq"):  # a message's ext is its first fragment's (spec 7.3)
                first_fragment[sid] = f
            if sid not in next_seq and sid in r.syn_seq:
                next_seq[sid] = r.syn_seq[sid] + 1
            if sid in next_seq:
                prev = last_frag.get(sid)
                if (
                    prev is not None
                    and not prev[2]
                    and f.get("msg_seq") == prev[0]
                    and f.get("frag_seq") == int(prev[1] or 0) + 1
                ):
                    out.append(
                        (
                            "ATP-SEQ-010",
                            f"stream {sid}: frag_seq {f.get('frag_seq')} of msg_seq {prev[0]} "
                            "follows a fragment without CONT",
                        )
                    )
                last_frag[sid] = (f.get("msg_seq"), f.get("frag_seq"), "CONT" in flags)
                want = next_seq[sid]
                if f.get("msg_seq") != want:
                    out.append(
                        (
                            "ATP-SEQ-003" if want == r.syn_seq.get(sid, -9) + 1 else "ATP-SEQ-001",
                            f"stream {sid}: msg_seq {f.get('msg_seq')}, expected {want}",
                        )
                    )
                    next_seq[sid] = int(f.get("msg_seq") or 0)
                cont = "CONT" in flags
                if not cont:
                    next_seq[sid] += 1
                in_message[sid] = cont
                if not cont and "FIN" not in flags and "MORE" not in flags:
                    out.append(
                        (
                            "ATP-FLAG-008",
                            f"stream {sid}: msg_seq {f.get('msg_seq')} has neither MORE nor FIN",
                        )
                    )
                if "FIN" in flags and "MORE" in flags:
                    out.append(("ATP-FLAG-008", f"stream {sid}: MORE together with FIN"))
            spent[sid] = spent.get(sid, 0) + int(f.get("size", 0))
            if (not r.text or r.text_credit) and spent[sid] > r.credit_at(sid, index):
                out.append(
                    (
                        "ATP-FLOW-008" if r.text else "ATP-FLOW-001",
                        f"stream {sid}: {spent[sid]} bytes sent with "
                        f"{r.credit_at(sid, index)} of credit",
                    )
                )
                spent[sid] = -(1 << 40)  # report once
            if "FIN" in flags and _level(r) >= 2:
                tel = first_fragment.get(sid, f).get("telemetry")
                if (
                    not isinstance(tel, Mapping)
                    or not {"tokens", "usd_micros", "latency_ms"} <= tel.keys()
                ):
                    out.append(("ATP-BUDGET-006", f"stream {sid}: FINAL telemetry {tel!r}"))
        if sid not in (0, None) and _ended(f):
            ended.add(sid)
            ended_at[sid] = index
        if (
            r.session_id
            and r.text
            and index >= r.session_from
            and t != "UNDECODABLE"
            and f.get("session_id") != r.session_id
        ):
            out.append(("ATP-JSON-007", f"a text frame without session_id {r.session_id!r}"))
    if r.text and any(e.direction == "received" and e.hex for e in r.rec.exchange):
        out.append(("ATP-WS-004", "a binary message on a session the client speaks text on"))
    return list(dict.fromkeys(out))


def _level(r: Runner) -> int:
    lvl = r.ctx.options.get("level", Level.L1)
    return {"L1": 1, "L2": 2, "L3": 3}[str(lvl)]


def result_of(r: Runner, rec: Recorder, exc: ScenarioFailed | None) -> CaseResult:
    broken = invariants(r)
    if exc is not None:
        viol = exc.violated or tuple(rec.case.requirements)
        extra = "; also " + "; ".join(f"[{i}] {m}" for i, m in broken[:3]) if broken else ""
        return rec.failed(
            exc.message + extra,
            exc.expected,
            tuple(dict.fromkeys([*viol, *(i for i, _ in broken)])),
        )
    if broken:
        return rec.failed(
            "; ".join(f"[{i}] {m}" for i, m in broken[:5]),
            "every invariant of the exchange holds",
            tuple(dict.fromkeys(i for i, _ in broken)),
        )
    return rec.passed()
