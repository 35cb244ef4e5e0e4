"""Strategies, escalation, hedging, telemetry and savings end to end (issue 13 items 3-4):
a real router on loopback, real gRPC adapter processes (``atp adapter serve
tests.router.scripted_adapter:Scripted``) of different cost, confidence and answers, and
the client library over WebSocket (ATP-STRAT-001…009).

The adapter processes start once for the module (each takes ~1 s to import); every test
builds its own router over them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio

from atp_proto.client import Final, Partial, StreamError, connect
from atp_proto.frames import BudgetWindow
from atp_proto.router import Router, RouterConfig
from atp_proto.router.routing.learning import Observation, Ranking, RouteQuery
from atp_proto.testing.processes import adapter_fleet

from ._helpers_e2e import ROOT, atp
from .conftest import ws_url

TARGET = "tests.router.scripted_adapter:Scripted"

#: name -> options: cost (usd_per_1k), reported and estimated confidence, answer
ADAPTERS: dict[str, dict[str, str]] = {
    "cheap": {"answer": "The answer is 42", "confidence": "0.3", "usd_per_1k": "1000"},
    "decoy": {  # cheaper than mid and strong, weak by its estimate, loud when called
        "answer": "42",
        "confidence": "0.99",
        "est_confidence": "0.25",
        "usd_per_1k": "3000",
    },
    "wrong": {"answer": "The answer is 41", "confidence": "0.8", "usd_per_1k": "5000"},
    "mid": {"answer": "42", "confidence": "0.7", "usd_per_1k": "10000"},
    "strong": {"answer": "It is 42.", "confidence": "0.95", "usd_per_1k": "100000"},
    "jsonish": {"answer": '{"answer": 42, "note": "a"}', "confidence": "0.6", "usd_per_1k": "500"},
    "jsonish2": {
        "answer": 'Result: {"answer": 42, "note": "b"}',
        "confidence": "0.5",
        "usd_per_1k": "600",
    },
    "slowpoke": {"answer": "42 slow", "confidence": "0.6", "usd_per_1k": "1000", "slow_ms": "1500"},
    "quick": {"answer": "42 quick", "confidence": "0.6", "usd_per_1k": "2000"},
}


@dataclass
class Fleet:
    urls: dict[str, str]
    log: Path  #: every call's start / end / cancellation, one line each

    def lines(self, what: str, name: str) -> list[str]:
        text = self.log.read_text() if self.log.exists() else ""
        return [ln for ln in text.splitlines() if ln.startswith(f"{what} {name} ")]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    log = tmp_path_factory.mktemp("fleet") / "calls.log"
    options = {name: {**opts, "log": str(log)} for name, opts in ADAPTERS.items()}
    with adapter_fleet(TARGET, options, cwd=ROOT) as urls:
        yield Fleet(urls, log)


async def _router(nursery: trio.Nursery, fleet: Fleet, **fields: Any) -> Router:
    cfg = RouterConfig(
        ws_port=0,
        metrics_port=None,
        auth=False,
        adapters=fleet.urls,
        health_interval_s=60,
        **fields,
    )
    router = Router(cfg.validate())
    await nursery.start(router.serve)
    return router


async def _ask(client: Any, prompt: str, **kw: Any) -> tuple[list[Partial], Final]:
    partials: list[Partial] = []
    async with client.stream(prompt, **kw) as st:
        async for item in st:
            if isinstance(item, Final):
                return partials, item
            partials.append(item)
    raise AssertionError("no FINAL")


def _tried(final: Final) -> list[str]:
    return [t["adapter"] for t in final.telemetry["tried"]]


async def test_quorum_agrees_after_numeric_normalisation(
    nursery: trio.Nursery, fleet: Fleet
) -> None:
    """[ATP-STRAT-002] [ATP-STRAT-003] quorum 2 over "The answer is 42" and "42": numeric
    agrees with the two cheapest, the strong adapter is never called."""
    router = await _router(nursery, fleet)
    async with connect(ws_url(router)) as client:
        meta = {
            "strategy": "quorum",
            "comparator": "numeric",
            "adapters": ["cheap", "mid", "strong"],
        }
        _, final = await _ask(client, "what is six times seven", meta=meta)
    assert final.content["adapter"] == "mid"  # the most confident of the agreeing group
    assert sorted(_tried(final)) == ["cheap", "mid"]
    assert final.telemetry["winner"] == "mid" and final.telemetry["strategy"] == "quorum"
    assert "quorum: 2 of 2" in final.telemetry["why"]


async def test_quorum_disagreement_asks_more_then_econsensus(
    nursery: trio.Nursery, fleet: Fleet
) -> None:
    """[ATP-STRAT-002] [ATP-STRAT-004] exact comparison: three different texts never make a
    quorum of 2 — every candidate is asked, then ECONSENSUS; 42 vs 41 under numeric too."""
    router = await _router(nursery, fleet)
    async with connect(ws_url(router)) as client:
        meta = {"strategy": "quorum", "comparator": "exact", "adapters": ["cheap", "mid", "strong"]}
        with pytest.raises(StreamError) as exc:
            await _ask(client, "exact quorum", meta=meta)
        assert exc.value.code == "ECONSENSUS"
        assert "quorum of 2 not reached: 3 answers in 3 groups" in exc.value.message
        meta = {"strategy": "quorum", "comparator": "numeric", "adapters": ["cheap", "wrong"]}
        with pytest.raises(StreamError) as exc2:
            await _ask(client, "numeric quorum", meta=meta)
        assert exc2.value.code == "ECONSENSUS"
    assert router.metrics.errors.get("ECONSENSUS") == 2


async def test_vote_and_best_confidence_differ(nursery: trio.Nursery, fleet: Fleet) -> None:
    """[ATP-STRAT-001] three answers: 42 (0.3 + 0.7) outvotes 41 (0.8), which best_confidence
    picks; a JSON field comparator agrees across differently wrapped JSON."""
    router = await _router(nursery, fleet)
    three = ["cheap", "wrong", "mid"]
    async with connect(ws_url(router)) as client:
        meta = {"strategy": "vote", "comparator": "numeric", "adapters": three, "fanout": 3}
        _, voted = await _ask(client, "vote please", meta=meta)
        meta = {"strategy": "best_confidence", "adapters": three, "fanout": 3}
        _, best = await _ask(client, "most confident please", meta=meta)
        meta = {
            "strategy": "quorum",
            "comparator": "json:answer",
            "adapters": ["jsonish", "jsonish2"],
        }
        _, js = await _ask(client, "json please", meta=meta)
    assert voted.content["adapter"] == "mid" and voted.content["answer"] == "42"
    assert "vote: 56%" in voted.telemetry["why"]  # 1.0 of 1.8
    assert best.content["adapter"] == "wrong"
    assert js.content["adapter"] == "jsonish" and "quorum: 2 of 2" in js.telemetry["why"]


async def test_first_good_stops_at_the_first_confident_answer(
    nursery: trio.Nursery, fleet: Fleet
) -> None:
    """[ATP-STRAT-001] [ATP-STRAT-004] first_good walks the plan cheap-first: cheap (0.3) is
    not good enough at 0.6, mid (0.7) is; at 0.99 nobody is: ECONSENSUS."""
    router = await _router(nursery, fleet)
    names = ["cheap", "mid", "strong"]
    async with connect(ws_url(router)) as client:
        meta = {"strategy": "first_good", "adapters": names, "min_confidence": 0.6}
        partials, final = await _ask(client, "first good", meta=meta)
        meta = {"strategy": "first_good", "adapters": names, "min_confidence": 0.99}
        with pytest.raises(StreamError) as exc:
            await _ask(client, "nobody is good", meta=meta)
    assert final.content["adapter"] == "mid" and _tried(final) == ["cheap", "mid"]
    notes = [p.content["escalate"] for p in partials if "escalate" in p.content]
    assert notes and notes[0]["from"] == "cheap" and notes[0]["to"] == "mid"
    assert exc.value.code == "ECONSENSUS" and "min_confidence 0.99" in exc.value.message


async def test_cascade_escalates_on_low_confidence_never_downward(
    nursery: trio.Nursery, fleet: Fleet
) -> None:
    """[ATP-STRAT-005] cascade at min_confidence 0.9: cheap (0.3) -> mid -> strong, cheapest
    stronger first; the decoy is cheaper than both but its estimate (0.25) is weaker than
    the champion, so it is never called — although it would claim 0.99."""
    router = await _router(nursery, fleet)
    async with connect(ws_url(router)) as client:
        meta = {
            "strategy": "cascade",
            "adapters": ["cheap", "decoy", "mid", "strong"],
            "min_confidence": 0.9,
        }
        partials, final = await _ask(client, "cascade please", meta=meta)
    assert _tried(final) == ["cheap", "mid", "strong"]
    assert final.content["adapter"] == "strong"
    steps = [
        (p.content["escalate"]["from"], p.content["escalate"]["to"])
        for p in partials
        if "escalate" in p.content
    ]
    assert steps == [("cheap", "mid"), ("mid", "strong")]
    assert "escalated from mid" in final.telemetry["why"]
    assert fleet.lines("start", "decoy") == []
    assert router.metrics.escalations.get("cascade") == 2


async def test_cascade_escalates_when_answers_disagree(nursery: trio.Nursery, fleet: Fleet) -> None:
    """[ATP-STRAT-005] cascade with two cheap starters that disagree (42 vs 41, numeric):
    escalate to the strong one although both were confident enough (min_confidence 0)."""
    router = await _router(nursery, fleet)
    async with connect(ws_url(router)) as client:
        meta = {
            "strategy": "cascade",
            "comparator": "numeric",
            "adapters": ["cheap", "wrong", "strong"],
            "fanout": 2,
        }
        _, final = await _ask(client, "disagree please", meta=meta)
        meta = {**meta, "adapters": ["cheap", "mid", "strong"]}
        _, agreed = await _ask(client, "agree please", meta=meta)
    assert final.content["adapter"] == "strong" and "answers disagree" in final.telemetry["why"]
    assert sorted(_tried(agreed)) == ["cheap", "mid"]  # 42 == 42: no escalation


async def test_telemetry_and_savings_per_tenant(nursery: trio.Nursery, fleet: Fleet) -> None:
    """[ATP-STRAT-007] [ATP-STRAT-008] FINAL telemetry names the tried adapters, the winner,
    why, the decision id and the savings against the strongest candidate (strong: its
    estimate for this prompt); the tenant's usage and savings reach the metrics."""
    router = await _router(nursery, fleet)
    prompt = "one two three four"  # 4 words: the scripted estimate counts words
    async with connect(ws_url(router)) as client:
        _, final = await _ask(client, prompt, meta={"adapters": ["cheap", "strong"]})
    tel = final.telemetry
    assert tel["winner"] == "cheap" and tel["strategy"] == "consensus"
    assert tel["tried"] == [
        {"adapter": "cheap", "status": "ok", "confidence": 0.3, "usd_micros": tel["usd_micros"]}
    ]
    assert re.fullmatch(r"[0-9a-f]{16}", tel["decision_id"])
    baseline = (4 + len(ADAPTERS["strong"]["answer"].split())) * 100000 // 1000
    assert tel["strongest"] == "strong" and tel["baseline_usd_micros"] == baseline
    assert tel["savings_usd_micros"] == baseline - tel["usd_micros"] > 0
    assert tel["savings_pct"] == round(100 * (baseline - tel["usd_micros"]) / baseline, 2)
    m = router.metrics
    assert m.usd.get("local") == tel["usd_micros"]
    assert m.baseline_usd.get("local") == baseline
    assert m.savings_usd.get("local") == tel["savings_usd_micros"]
    assert 'atp_savings_usd_micros{tenant="local"}' in m.render()


async def _warm(client: Any, n: int, meta: dict[str, Any]) -> None:
    """``n`` quick calls of slowpoke: the router learns its time to first chunk (every
    call is sampled; without meta.hedge none of them may hedge or spend the bucket)."""
    quiet = {k: v for k, v in meta.items() if k != "hedge"}
    for i in range(n):
        _, final = await _ask(client, f"warm {i}", meta=quiet)
        assert final.content["adapter"] == "slowpoke" and "hedge" not in final.telemetry


HEDGE_META = {"adapters": ["slowpoke", "quick"], "hedge": True}


async def test_hedge_wins_and_the_slow_call_is_cancelled(
    nursery: trio.Nursery, fleet: Fleet
) -> None:
    """[ATP-STRAT-006] after 8 fast calls slowpoke's p95 to first chunk is known; a call
    slower than that is hedged to quick, quick answers first and wins, and slowpoke's call
    is cancelled — the adapter process itself logs the cancellation."""
    router = await _router(nursery, fleet)
    async with connect(ws_url(router)) as client:
        await _warm(client, 8, HEDGE_META)
        partials, final = await _ask(client, "SLOW hedge-me", meta=HEDGE_META)
    assert final.content["adapter"] == "quick"
    assert final.telemetry["hedge"] == {"from": "slowpoke", "to": "quick", "won": True}
    # the FINAL did not wait for the loser: slowpoke's first chunk was 1.5 s away
    assert final.telemetry["latency_ms"] < 1500
    statuses = {t["adapter"]: t["status"] for t in final.telemetry["tried"]}
    assert statuses == {"slowpoke": "cancelled", "quick": "ok"}
    assert any("hedge" in p.content for p in partials)
    assert all(p.content.get("adapter") != "slowpoke" for p in partials)
    with trio.fail_after(5):
        while not any(ln.endswith("SLOW hedge-me") for ln in fleet.lines("cancelled", "slowpoke")):
            await trio.sleep(0.05)
    assert not any(ln.endswith("SLOW hedge-me") for ln in fleet.lines("end", "slowpoke"))
    assert router.metrics.hedges.get("won") == 1


async def test_hedge_rate_is_bounded(nursery: trio.Nursery, fleet: Fleet) -> None:
    """[ATP-STRAT-006] 20 slow streams at once: the token bucket (burst 2, rate 0.1 per
    hedge-enabled stream) lets at most 2 + 0.1 x 20 of them hedge; the rest wait."""
    router = await _router(nursery, fleet)
    finals: list[Final] = []
    async with connect(ws_url(router)) as client:
        await _warm(client, 8, HEDGE_META)

        async def one(i: int) -> None:
            finals.append((await _ask(client, f"SLOW rate {i}", meta=HEDGE_META))[1])

        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(one, i)
    hedged = [f for f in finals if "hedge" in f.telemetry]
    m = router.metrics
    assert len(finals) == 20
    assert 2 <= len(hedged) <= 4 == int(2 + 0.1 * 20)
    assert m.hedges.get("started") == len(hedged)
    assert m.hedges.get("throttled") == 20 - len(hedged)


async def test_hedges_count_against_budget_and_max_parallel(
    nursery: trio.Nursery, fleet: Fleet
) -> None:
    """[ATP-STRAT-006] a window with money for one call, or max_parallel 1, refuses the hedge:
    the stream waits for the slow adapter instead."""
    router = await _router(nursery, fleet)
    async with connect(ws_url(router)) as client:
        # 20 quick samples: the first slow call's 1.5 s must not become the p95 of 9
        await _warm(client, 20, HEDGE_META)
        tight = BudgetWindow(max_usd_micros=10)  # slowpoke: 4 usd_micros, quick: 8
        _, poor = await _ask(client, "SLOW poor", meta=HEDGE_META, window=tight)
        _, narrow = await _ask(
            client, "SLOW narrow", meta=HEDGE_META, window=BudgetWindow(max_parallel=1)
        )
    assert poor.content["adapter"] == "slowpoke" and "hedge" not in poor.telemetry
    assert narrow.content["adapter"] == "slowpoke" and "hedge" not in narrow.telemetry
    assert router.metrics.hedges.get("refused") == 2
    assert router.metrics.hedges.get("started") == 0


async def test_bad_strategy_hints_are_eproto(nursery: trio.Nursery, fleet: Fleet) -> None:
    """[ATP-STRAT-009] unknown strategy, comparator or a non-boolean hedge: EPROTO naming it."""
    router = await _router(nursery, fleet)
    async with connect(ws_url(router)) as client:
        for meta, word in (
            ({"strategy": "magic"}, "meta.strategy"),
            ({"comparator": "json:"}, "meta.comparator"),
            ({"hedge": "yes"}, "meta.hedge"),
        ):
            with pytest.raises(StreamError) as exc:
                await _ask(client, "bad hint", meta=meta)
            assert exc.value.code == "EPROTO" and word in exc.value.message


async def test_demo_escalates_hedges_and_reports_savings() -> None:
    """[ATP-STRAT-005] [ATP-STRAT-006] [ATP-STRAT-008] [ATP-AUDIT-003] `atp demo`: one stream
    escalates echo -> persona, one is hedged (tail's latency tail, persona wins), one saves
    against the strongest, and the decision log it wrote verifies."""
    result = await trio.to_thread.run_sync(lambda: atp("demo", "--json", timeout=60))
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    summary = json.loads(out if out.startswith("{") else out[out.rindex("\n{") + 1 :])
    esc = summary["escalated_final"]["telemetry"]
    assert [t["adapter"] for t in esc["tried"]] == ["echo", "persona"]
    hedged = summary["hedged_final"]["telemetry"]
    assert hedged["hedge"] == {"from": "tail", "to": "persona", "won": True}
    saved = summary["saving_final"]["telemetry"]
    assert saved["winner"] == "tail" and saved["savings_usd_micros"] > 0
    assert summary["audit"]["ok"] is True and summary["audit"]["records"] >= 15


class FixedPredictions:
    """A learner with fixed predictions (the learning itself is tested elsewhere): cheap
    first by estimate, as CheapFirst, plus predicted quality; keeps what it observes."""

    def __init__(self, predicted: dict[str, float]) -> None:
        self.predicted = predicted
        self.seen: list[tuple[list[Observation], str | None]] = []

    def rank(self, query: RouteQuery) -> Ranking:
        order = sorted(query.candidates, key=lambda c: c.est_usd_micros)
        return Ranking(
            order=tuple(c.name for c in order),
            predicted_quality={c.name: self.predicted[c.name] for c in order},
            model="fixed",
        )

    def observe(self, query: RouteQuery, observations: Any, winner: str | None) -> None:
        self.seen.append((list(observations), winner))

    def feedback(self, decision_id: str, quality: float, *, source: str = "client") -> bool:
        return False


async def test_cascade_by_predicted_quality_never_downward(
    nursery: trio.Nursery, fleet: Fleet
) -> None:
    """[ATP-STRAT-005] with the learner's predictions, the cascade starts at the cheapest
    adapter predicted good enough (decoy, 0.85 >= min_quality 0.8: cheap is skipped), and
    escalates only to adapters predicted stronger than the champion: strong (0.95), never
    mid (0.6), although mid is cheaper. The learner is told which answers agreed."""
    learner = FixedPredictions({"cheap": 0.3, "decoy": 0.85, "mid": 0.6, "strong": 0.95})
    router = await _router(nursery, fleet)
    router.routing = replace(router.routing, learner=learner)
    names = ["cheap", "decoy", "mid", "strong"]
    async with connect(ws_url(router)) as client:
        meta = {"strategy": "cascade", "adapters": names, "min_quality": 0.8}
        _, good = await _ask(client, "predicted", meta=meta)
        meta = {**meta, "min_confidence": 0.995, "comparator": "numeric"}
        _, top = await _ask(client, "predicted strict", meta=meta)
    assert _tried(good) == ["decoy"] and good.telemetry["strongest"] == "strong"
    assert _tried(top) == ["decoy", "strong"]
    assert top.content["adapter"] == "strong"
    assert "no stronger adapter left" in top.telemetry["why"]
    observations, winner = learner.seen[-1]
    assert winner == "strong"
    assert {o.adapter: o.agreed for o in observations} == {"decoy": True, "strong": True}
