"""The router case that teaches a learning router first: gold's quality floor
(``router.pair.gold-floor``, ATP-FEED-006).

It needs the two scripted adapters (``--adapter-listen A,B``: the router's ``conf`` and
``conf2``, the same work and the same price) and the router's feedback endpoint
(``--http-url``). Training: bronze streams on one adapter at a time (``meta.adapters``),
in turn, each FINAL answered with feedback on its decision — quality 1.0 for ``conf``,
0.0 for ``conf2`` — so that ``conf2`` is predicted below any quality floor and ``conf``
above. Then gold streams over both: ``conf2`` must never be the first adapter called (a
router whose gold lane explores freely is caught: each gold stream is a chance). Every
stream has its own scripted-adapter token, so the adapter's ``stream_start`` events say
which adapter each stream tried first.

UNSUPPORTED when the router takes no feedback (409).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from conformance._record import Recorder
from conformance.drivers.ws import open_session
from conformance.model import CaseResult, CaseSpec, Level, Role, Verdict
from conformance.roles import RunContext
from conformance.scenario import Runner, ScenarioFailed, result_of

__all__ = ["CASE", "run"]

TRAIN = 16  #: bronze streams of training, half on each adapter
GOLD = 12  #: gold streams judged
_MIN_EACH = 3  #: reports per adapter that training must give

CASE = CaseSpec(
    "router.pair.gold-floor",
    Role.ROUTER,
    "a learning router never first tries, in gold, an adapter predicted below its quality "
    "floor while another meets it",
    ("ATP-FEED-006",),
    level=Level.L3,
    description=f"needs --adapter-listen A,B and --http-url: {TRAIN} bronze streams, on conf "
    "and on conf2 in turn, feedback 1.0 on each of conf's decisions and 0.0 on conf2's; "
    f"then {GOLD} gold streams over both: conf2 is never the first adapter called. "
    "UNSUPPORTED without feedback (409)",
)


async def run(
    case: CaseSpec,
    ctx: RunContext,
    rec: Recorder,
    post: Any,
) -> CaseResult:
    """``post(body) -> (status, body)``: POST /v1/feedback on the router's HTTP port."""
    adapter = ctx.options.get("adapter")
    if adapter is None or "," not in (ctx.adapter_listen or ""):
        return rec.result(
            Verdict.UNSUPPORTED,
            "needs a second scripted adapter: --adapter-listen HOST:PORT,HOST:PORT",
        )
    if not ctx.options.get("http_url"):
        return rec.result(Verdict.UNSUPPORTED, "needs --http-url (the router's HTTP base URL)")
    session = await open_session(ctx, rec, text=False)
    r = Runner(ctx, session, rec, False)
    try:
        reports = {"conf": 0, "conf2": 0}
        sid = 1
        for i in range(TRAIN):
            end = await _stream(r, sid, "bronze", ["conf", "conf2"][i % 2])
            raw = end.get("telemetry")
            tel: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
            winner, did = tel.get("winner"), tel.get("decision_id")
            sid += 2
            if winner not in reports or not isinstance(did, str):
                continue
            body = {"decision_id": did, "quality": 1.0 if winner == "conf" else 0.0}
            status, answer = await post(json.dumps(body).encode())
            if status == 409:
                return rec.result(Verdict.UNSUPPORTED, "the router's learner takes no feedback")
            if status != 200:
                return rec.failed(
                    f"feedback on decision {did} answered {status} {answer[:80]!r}",
                    "200",
                    ("ATP-FEED-002",),
                )
            reports[winner] += 1
        rec.note("training reports per winner", reports)
        if min(reports.values()) < _MIN_EACH:
            return rec.result(
                Verdict.UNSUPPORTED,
                f"training gave too few reports per adapter ({reports}): its FINALs did "
                "not name the adapter that won (telemetry.winner, ATP-STRAT-007)",
            )
        firsts: list[str] = []
        for _ in range(GOLD):
            await _stream(r, sid, "gold", "conf", "conf2")
            starts = [e for e in adapter.events(f"{r.token}-{sid}") if e["event"] == "stream_start"]
            firsts.append(str(starts[0]["adapter"]) if starts else "")
            sid += 2
        rec.note("first adapter of each gold stream", firsts)
        if "conf2" in firsts:
            return rec.failed(
                f"gold stream {firsts.index('conf2') + 1} of {GOLD} tried conf2 first (its "
                f"decisions were all reported 0.0, conf's 1.0): {firsts}",
                "conf first in every gold stream",
                ("ATP-FEED-006",),
            )
        checked = result_of(r, rec, None)
        if checked.verdict is not Verdict.PASS:
            return checked
        return rec.result(Verdict.PASS, f"conf first in all {GOLD} gold streams ({reports})")
    except ScenarioFailed as exc:
        return result_of(r, rec, exc)
    finally:
        await session.aclose()


async def _stream(r: Runner, sid: int, lane: str, *adapters: str) -> dict[str, Any]:
    """One stream over ``adapters`` with its own token; its FINAL."""
    work = "duo:ok|ok"
    m = r.syn({"stream_id": sid, "qos": lane, "behaviour": work})
    m["meta"]["adapters"] = list(adapters)
    m["payload"]["content"]["prompt"] = f"conformance:{r.token}-{sid}:{work}"
    await r.send(m)
    end = await r.end_of(sid, r.ctx.timeout(10))
    if end is None or "FIN" not in (end.get("flags") or []):
        raise ScenarioFailed(f"stream {sid} ({lane}) did not end with FIN: {end}", "a FINAL")
    return end
