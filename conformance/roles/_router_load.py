"""The router case that needs a router under pressure: shedding by lane
(``router.lanes.shed-order``, ATP-ADAPT-002, ATP-ERR-004).

A router under test says nothing on the wire about its concurrency limit or its queue, so
the vendor passes ``--pressure N``: a number of streams at once that takes the router past
both (the reference's tests configure one stream at a time and a queue of 4, then N = 4).
The case opens N bronze streams, then N silver, then N gold (a pause between lanes, so
that each lower lane is queued first), every stream its own token of the scripted
adapter, so that the adapter's ``stream_start`` says when each stream left the queue.

It fails when a stream was shed (EPREEMPT) while a stream of a lower lane was still
waiting — seen as that lower stream's adapter call starting after the higher one's
EPREEMPT arrived — and when an EPREEMPT carries no ``retry_after_ms``. It is UNSUPPORTED
when the router shed nothing (N did not put it under pressure).
"""

from __future__ import annotations

from typing import Any

import trio

from conformance._record import Recorder
from conformance.drivers.ws import open_session
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import RunContext
from conformance.scenario import Runner, result_of

__all__ = ["CASE", "MAX_PRESSURE", "run"]

#: the most streams per lane the case opens
MAX_PRESSURE = 100
_LANES = ("bronze", "silver", "gold")
_RANK = {lane: i for i, lane in enumerate(_LANES)}
#: every stream's work: one chunk after 400 ms (longer than sending all three lanes)
_WORK = "{n=1}slow:400"
#: an adapter call must start this much after an EPREEMPT to count as "was waiting"
_MARGIN_S = 0.05

CASE = CaseSpec(
    "router.lanes.shed-order",
    Role.ROUTER,
    "under pressure the router sheds bronze before silver and silver before gold, with "
    "EPREEMPT and retry_after_ms",
    ("ATP-ADAPT-002", "ATP-ERR-004"),
    level=Level.L2,
    description="needs --adapter-listen and --pressure N (streams at once past the router's "
    f"concurrency limit and queue, at most {MAX_PRESSURE}): N bronze, then N silver, then N "
    "gold streams of the same slow work; no stream may be shed (EPREEMPT) while a stream of "
    "a lower lane still waits (its adapter call starting later), and every EPREEMPT "
    "carries retry_after_ms; UNSUPPORTED when nothing was shed",
)


async def run(case: CaseSpec, ctx: RunContext, rec: Recorder) -> CaseResult:
    adapter = ctx.options.get("adapter")
    if adapter is None:
        return rec.result(Verdict.UNSUPPORTED, "needs --adapter-listen (the scripted adapter)")
    pressure = ctx.options.get("pressure")
    if not pressure:
        return rec.result(
            Verdict.UNSUPPORTED,
            "needs --pressure N (streams at once past the router's concurrency limit and queue)",
        )
    n = int(pressure)
    if n > MAX_PRESSURE:
        return rec.result(Verdict.UNSUPPORTED, f"--pressure {n} is over {MAX_PRESSURE}")
    session = await open_session(ctx, rec, text=False)
    r = Runner(ctx, session, rec, False)
    lane_of: dict[int, str] = {}
    ends: dict[int, tuple[float, dict[str, Any]]] = {}

    def note_ends() -> None:
        for f in r.s.frames:
            sid = f.get("stream_id")
            if sid in lane_of and sid not in ends and _ended(f):
                ends[sid] = (trio.current_time(), f)

    async def read_for(seconds: float) -> None:
        with trio.move_on_after(seconds):
            while True:
                if await r.s.next(seconds) is None and r.s.closed:
                    return
                note_ends()

    try:
        sid = 1
        for lane in _LANES:
            for _ in range(n):
                m = r.syn({"stream_id": sid, "qos": lane, "behaviour": _WORK, "ttl": 60})
                m["payload"]["content"]["prompt"] = f"conformance:{r.token}-{sid}:{_WORK}"
                lane_of[sid] = lane
                await r.send(m)
                sid += 2
            await read_for(ctx.timeout(0.1))
        bound = ctx.timeout(3 * n * 0.4 * 2 + 10)
        with trio.move_on_after(bound):
            while len(ends) < len(lane_of) and not r.s.closed:
                await read_for(0.5)
        note_ends()
        if len(ends) < len(lane_of):
            return rec.failed(
                f"only {len(ends)} of {len(lane_of)} streams ended within {bound:.0f} s",
                "every stream ends (FIN or EPREEMPT)",
            )
        starts: dict[int, float] = {}
        for s in lane_of:
            ev = [e for e in adapter.events(f"{r.token}-{s}") if e["event"] == "stream_start"]
            if ev:
                starts[s] = float(ev[0]["at"])
        shed: dict[int, float] = {}
        for s, (at, f) in ends.items():
            err = f.get("error") or {}
            if f.get("type") == "ERROR" and err.get("code") == "EPREEMPT":
                shed[s] = at
                if not isinstance(err.get("retry_after_ms"), int):
                    return rec.failed(
                        f"stream {s} ({lane_of[s]}) was shed without retry_after_ms",
                        "EPREEMPT with retry_after_ms",
                        ("ATP-ADAPT-002", "ATP-ERR-004"),
                    )
        counts = {lane: sum(1 for s in shed if lane_of[s] == lane) for lane in _LANES}
        rec.note("shed per lane", counts)
        if not shed:
            return rec.result(
                Verdict.UNSUPPORTED, f"the router shed nothing with {n} streams per lane"
            )
        for high, at in sorted(shed.items(), key=lambda x: x[1]):
            for low, started in starts.items():
                if _RANK[lane_of[low]] < _RANK[lane_of[high]] and started > at + _MARGIN_S:
                    return rec.failed(
                        f"{lane_of[high]} stream {high} was shed while {lane_of[low]} stream "
                        f"{low} waited (its adapter call started {started - at:.3f} s later)",
                        "lower lanes shed first",
                        ("ATP-ADAPT-002",),
                    )
        checked = result_of(r, rec, None)
        if checked.verdict is not Verdict.PASS:
            return checked
        return rec.result(Verdict.PASS, f"shed per lane: {counts}")
    finally:
        await session.aclose()


def _ended(f: dict[str, Any]) -> bool:
    return f.get("type") == "ERROR" or "FIN" in (f.get("flags") or [])
