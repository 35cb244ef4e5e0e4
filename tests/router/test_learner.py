"""The learned ranker in-process (unit tests; the end-to-end path is in
test_e2e_feedback.py): convergence on a synthetic workload with a fixed seed, the gold
lane's quality floor, feedback bookkeeping, and the SQLite / JSON state."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from atp_proto.frames import QoS
from atp_proto.router.routing.learner import (
    BanditLearner,
    Featurizer,
    LaneBounds,
    Weights,
    parse_weights,
    store,
)
from atp_proto.router.routing.learner.offline import read_records, train
from atp_proto.router.routing.learning import CandidateView, Observation, RouteQuery

#: name -> (probability the answer is good, guard-banded micro-dollars)
WORKLOAD = {"cheap-bad": (0.3, 100.0), "cheap-good": (0.85, 150.0), "dear-best": (0.9, 5000.0)}


def _query(i: int, lane: QoS = QoS.SILVER, prompt: str = "", tenant: str = "t") -> RouteQuery:
    cands = tuple(CandidateView(n, 100.0, usd) for n, (_, usd) in WORKLOAD.items())
    text = prompt or f"question number {i % 7} about topic {i % 3}"
    return RouteQuery(f"d{i}", tenant, "default", "qa", lane, text, cands)


def _play(learner: BanditLearner, rounds: int, seed: int, lane: QoS = QoS.SILVER) -> list[str]:
    """Each round: rank, call the first, report a Bernoulli quality (bandit feedback)."""
    rng = random.Random(seed)
    firsts = []
    for i in range(rounds):
        q = _query(i, lane)
        first = learner.rank(q).order[0]
        learner.observe(q, [Observation(first, True, None, 10, 100, 5.0)], first)
        good = rng.random() < WORKLOAD[first][0]
        assert learner.feedback(q.decision_id, 1.0 if good else 0.0)
        firsts.append(first)
    return firsts


def test_converges_to_the_cheap_good_enough_adapter() -> None:
    """[ATP-FEED-005] Thompson sampling over quality and cost, from nothing, with fixed
    seeds: over time the cheap adapter that is good enough wins over both the cheap bad one
    and the dear one that is only a little better (five seeded runs, so that one run's
    luck with the Bernoulli outcomes decides nothing)."""
    earlies, lates = [], []
    plan = {"default": Weights(quality=1.0, cost=0.2, latency=0.0)}
    for seed in range(5):
        learner = BanditLearner(seed=seed, weights=plan)
        firsts = _play(learner, 600, seed=100 + seed)
        early = firsts[:50].count("cheap-good") / 50
        late = firsts[-100:].count("cheap-good") / 100
        assert firsts[-100:].count("cheap-bad") <= 5
        earlies.append(early)
        lates.append(late)
        x = learner.vector("question number 1 about topic 1", "qa")
        pred = learner.predict(x, list(WORKLOAD))
        assert pred["cheap-bad"] < pred["cheap-good"] and pred["cheap-good"] > 0.6
    assert min(lates) >= 0.6 and sum(lates) / len(lates) >= 0.85, lates
    assert sum(lates) > sum(earlies), (earlies, lates)


def test_same_seed_same_decisions() -> None:
    assert _play(BanditLearner(seed=11), 60, seed=5) == _play(BanditLearner(seed=11), 60, seed=5)


def test_gold_explores_least_and_respects_the_quality_floor() -> None:
    """[ATP-FEED-006] In gold, an adapter predicted below the floor is never tried first
    while another candidate meets it; gold explores less than bronze."""
    learner = BanditLearner(seed=1, lanes=LaneBounds(gold_floor=0.6))
    _play(learner, 150, seed=2)  # learns cheap-bad is poor
    x = learner.vector("question number 1 about topic 1", "qa")
    assert learner.predict(x, ["cheap-bad"])["cheap-bad"] < 0.6
    explored = {QoS.GOLD: 0, QoS.BRONZE: 0}
    for lane in explored:
        for i in range(300):
            r = learner.rank(_query(i, lane))
            if lane is QoS.GOLD:
                assert r.order[0] != "cheap-bad"
                assert r.predicted_quality[r.order[0]] >= 0.6
            explored[lane] += r.explored
    assert explored[QoS.GOLD] < explored[QoS.BRONZE]


def test_gold_floor_falls_back_to_the_best_when_none_meets_it() -> None:
    learner = BanditLearner(seed=1, lanes=LaneBounds(gold_floor=0.99))
    r = learner.rank(_query(0, QoS.GOLD))
    assert sorted(r.order) == sorted(WORKLOAD)


def test_feedback_bookkeeping() -> None:
    """[ATP-FEED-003, ATP-FEED-004] A decision takes one report, only after its stream
    finished with an answer; unknown, failed and expired ids are refused; the map of
    pending decisions is bounded in number and time."""
    now = [0.0]
    learner = BanditLearner(seed=0, ttl_s=10, max_pending=5, clock=lambda: now[0])
    q = _query(1)
    assert not learner.feedback("never-made", 1.0)
    first = learner.rank(q).order[0]
    assert not learner.feedback(q.decision_id, 1.0)  # not finished yet
    learner.observe(q, [Observation(first, True, 0.7, 1, 1, 1.0)], first)
    assert not learner.feedback(q.decision_id, 1.5)  # out of range
    assert learner.feedback(q.decision_id, 1.0)
    assert not learner.feedback(q.decision_id, 1.0)  # already reported
    assert learner.arm(first).feedback_n == 1
    failed = _query(2)
    learner.rank(failed)
    learner.observe(failed, [Observation("cheap-bad", False, None, 0, 0, 1.0)], None)
    assert not learner.feedback(failed.decision_id, 1.0)
    assert learner.arm("cheap-bad").failures == 1
    late = _query(3)
    learner.observe(late, [], learner.rank(late).order[0])
    now[0] = 11.0
    assert not learner.feedback(late.decision_id, 1.0)  # expired
    for i in range(10, 30):
        learner.rank(_query(i))
    assert len(learner.pending) <= 5


def test_confidence_stands_in_when_no_feedback_comes() -> None:
    """[ATP-FEED-005] An unreported decision's adapter confidence is learned from when it
    expires; a failed call counts as quality 0 at once."""
    now = [0.0]
    learner = BanditLearner(seed=0, ttl_s=1, clock=lambda: now[0])
    x = learner.vector("question number 0 about topic 0", "qa")
    before = learner.predict(x, ["dear-best", "cheap-bad"])
    for i in range(20):
        q = _query(i * 21)  # the same prompt each time
        learner.rank(q)
        learner.observe(
            q,
            [
                Observation("dear-best", True, 0.95, 1, 1, 1.0),
                Observation("cheap-bad", False, None, 0, 0, 1.0),
            ],
            "dear-best",
        )
    now[0] = 5.0
    learner.rank(_query(999))  # expiry is lazy: the next call settles the old decisions
    after = learner.predict(x, ["dear-best", "cheap-bad"])
    assert after["dear-best"] > before["dear-best"] + 0.1
    assert after["cheap-bad"] < before["cheap-bad"] - 0.1
    # an answer that disagreed with the chosen one is weak evidence against its adapter
    for i in range(20):
        q = _query(2000 + i * 21)
        learner.rank(q)
        learner.observe(
            q,
            [
                Observation("dear-best", True, None, 1, 1, 1.0),
                Observation("cheap-good", True, None, 1, 1, 1.0, agreed=False),
            ],
            "dear-best",
        )
    assert learner.predict(x, ["cheap-good"])["cheap-good"] < 0.4


def test_features_are_deterministic_and_bounded() -> None:
    f = Featurizer(256)
    a = f.vector("What is 2 + 2?", "math")
    assert np.array_equal(a, Featurizer(256).vector("What is 2 + 2?", "math"))
    assert not np.array_equal(a, f.vector("What is 2 + 2?", "chat"))
    long = f.vector("word " * 50_000, "qa")
    assert a.shape == long.shape == (256,)
    assert np.linalg.norm(long) < 10 and np.linalg.norm(a) < 10


def test_parse_weights() -> None:
    w = parse_weights("default=1,0.2,0;free=1,0.9,0.1")
    assert w["free"].cost == 0.9 and w["default"].latency == 0
    for bad in ("default=1,2", "x=a,b,c", "=1,1,1", "p=1,-1,0"):
        with pytest.raises(ValueError, match="routing weights"):
            parse_weights(bad)


def test_state_round_trips_through_sqlite_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """[ATP-FEED-007] What the learner knows survives a save and a load, and an export and
    an import, bit for bit; a state of another dimension is refused."""
    learner = BanditLearner(seed=4)
    _play(learner, 40, seed=4)
    path = tmp_path / "state.sqlite"
    store.save(path, store.snapshot(learner))
    fresh = BanditLearner()
    store.apply(fresh, store.load(path))
    x = learner.vector("question number 2 about topic 2", "qa")
    assert fresh.predict(x, list(WORKLOAD)) == learner.predict(x, list(WORKLOAD))
    doc = json.loads(json.dumps(store.dump_json(store.load(path))))
    again = store.load_json(doc)
    assert {n: a.feedback_n for n, a in again.arms.items()} == {
        n: a.feedback_n for n, a in learner.arms.items()
    }
    assert all(np.array_equal(again.arms[n].a_inv, a.a_inv) for n, a in learner.arms.items())
    with pytest.raises(store.StateError, match="dimension"):
        store.apply(BanditLearner(dim=128), again)
    with pytest.raises(store.StateError):
        store.load_json({"format": "something else"})
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(store.StateError):
        store.load(tmp_path / "junk.sqlite")


def test_offline_training_on_routing_data_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Trained on records where one model fails long prompts, the learner predicts it."""
    lines = []
    for i in range(60):
        long = i % 2 == 0
        prompt = ("explain in depth the long multi step problem " * 6) if long else "hi there"
        lines.append(
            json.dumps(
                {
                    "id": f"t/{i}",
                    "source": "synthetic",
                    "category": "qa",
                    "prompt": f"{prompt} {i}",
                    "bucket": i,
                    "models": {
                        "small": {
                            "correct": 0 if long else 1,
                            "in_tokens": 5,
                            "out_tokens": 3,
                            "cost_usd": 0.0001,
                        },
                        "big": {"score": 9.0, "in_tokens": 5, "out_tokens": 3, "cost_usd": 0.01},
                    },
                }
            )
        )
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    learner = BanditLearner()
    counts = train(learner, read_records(data))
    assert counts == {"big": 60, "small": 60}
    hard = learner.vector("explain in depth the long multi step problem " * 6 + " 99", "qa")
    easy = learner.vector("hi there 99", "qa")
    assert learner.predict(hard, ["small"])["small"] < 0.4
    assert learner.predict(easy, ["small"])["small"] > 0.6
    assert learner.predict(easy, ["big"])["big"] == pytest.approx(8 / 9, abs=0.1)
