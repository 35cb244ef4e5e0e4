"""The online learner's exploration levers (issue 13 items 2 and 6; benchmarks/RESULTS.md,
"online exploration"): the task type's feature weight (a weaker prior on the task type:
a new task type is as uncertain as a new adapter, a seen one is learned from a few
answers), the shared Thompson draw, and the state that carries the feature weight
(format version 2; version 1 still read). In-process, small fixed workloads."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from atp_proto.frames import QoS
from atp_proto.router.routing.learner import BanditLearner, Featurizer, LaneBounds, store
from atp_proto.router.routing.learning import CandidateView, RouteQuery


def _taught(task_weight: float) -> BanditLearner:
    """One adapter, answers of quality 0.2 on 'code' prompts and 0.9 on 'chat' ones."""
    learner = BanditLearner(task_weight=task_weight)
    arm = learner.arm("a")
    for i in range(6):
        arm.update(learner.vector(f"write a parser number {i}", "code"), 0.2)
        arm.update(learner.vector(f"say hello to friend {i}", "chat"), 0.9)
    return learner


def test_a_heavier_task_feature_learns_the_task_type_from_few_answers() -> None:
    """Six answers per task type: the gap the arm predicts between the two task types on
    unseen prompts is larger with weight 3 than with weight 1 (the prior on the task type
    holds it less), and nearer the true 0.7."""
    gaps = {}
    for tw in (1.0, 3.0):
        learner = _taught(tw)
        code = learner.predict(learner.vector("an unseen request", "code"), ["a"])["a"]
        chat = learner.predict(learner.vector("an unseen request", "chat"), ["a"])["a"]
        gaps[tw] = chat - code
    assert gaps[3.0] > gaps[1.0] + 0.1, gaps
    assert abs(0.7 - gaps[3.0]) < abs(0.7 - gaps[1.0]), gaps


def test_an_unseen_task_type_is_explored_like_a_new_adapter() -> None:
    """The posterior variance for a prompt of a task type the arm never saw stays near a
    new arm's, well above that of a seen task type; weight 1 barely tells them apart."""
    ratios = {}
    for tw in (1.0, 3.0):
        learner = _taught(tw)
        arm = learner.arm("a")
        seen = arm.predict(learner.vector("an unseen request", "code"))[1]
        unseen = arm.predict(learner.vector("an unseen request", "legal"))[1]
        ratios[tw] = unseen / seen
    assert ratios[3.0] > 2.0 * ratios[1.0], ratios


def test_task_weight_is_checked() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="task_weight"):
            Featurizer(task_weight=bad)


def _query(i: int) -> RouteQuery:
    cands = (CandidateView("cheap", 70.0, 100.0), CandidateView("dear", 70.0, 2000.0))
    return RouteQuery(f"d{i}", "t", "default", "qa", QoS.SILVER, f"prompt {i}", cands)


def test_a_shared_draw_cancels_what_both_arms_do_not_know() -> None:
    """Two arms with the same posterior (both new): with one draw shared by the candidates
    the spread cancels and the cheaper is always first; with a draw each, the dearer is
    first on some decisions (exploration the two identical posteriors cannot repay)."""
    firsts = {}
    for shared in (True, False):
        learner = BanditLearner(seed=3, shared_draw=shared, compete_c=0.0)
        firsts[shared] = [learner.rank(_query(i)).order[0] for i in range(200)]
    assert set(firsts[True]) == {"cheap"}
    assert firsts[False].count("dear") > 20, firsts[False].count("dear")


def test_the_task_weight_travels_in_the_state(tmp_path: Path) -> None:
    """A state learned with weight 3 is written as version 2 with its weight; a default
    learner that loads it takes the weight and predicts the same (SQLite and JSON). A
    state with weight 1 is still written as version 1, which older routers read."""
    learner = _taught(3.0)
    path = tmp_path / "s.sqlite"
    store.save(path, store.snapshot(learner))
    meta = dict(sqlite3.connect(path).execute("SELECT key, value FROM meta").fetchall())
    assert meta["version"] == "2" and float(meta["task_weight"]) == 3.0
    x_text = ("an unseen request", "code")
    for state in (
        store.load(path),
        store.load_json(json.loads(store.to_text(store.snapshot(learner)))),
    ):
        fresh = BanditLearner()
        store.apply(fresh, state)
        assert fresh.features.task_weight == 3.0
        got = fresh.predict(fresh.vector(*x_text), ["a"])
        assert got == learner.predict(learner.vector(*x_text), ["a"])
    one = tmp_path / "one.sqlite"
    store.save(one, store.snapshot(_taught(1.0)))
    meta = dict(sqlite3.connect(one).execute("SELECT key, value FROM meta").fetchall())
    assert meta["version"] == "1" and "task_weight" not in meta
    assert store.dump_json(store.snapshot(_taught(1.0)))["version"] == 1


def test_a_version_1_state_is_read_with_weight_1(tmp_path: Path) -> None:
    """A state file of version 1 (no task weight: the features then had weight 1) loaded
    by a learner whose default weight differs: the learner takes weight 1, so the state
    predicts what it predicted when it was saved."""
    old = _taught(1.0)
    path = tmp_path / "v1.sqlite"
    store.save(path, store.snapshot(old))
    learner = BanditLearner(task_weight=3.0)
    store.apply(learner, store.load(path))
    assert learner.features.task_weight == 1.0
    x = ("an unseen request", "chat")
    assert learner.predict(learner.vector(*x), ["a"]) == old.predict(old.vector(*x), ["a"])


@pytest.mark.parametrize("bad", ["0", "-2", "nan", "many"])
def test_a_bad_task_weight_in_a_state_is_refused(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "s.sqlite"
    store.save(path, store.snapshot(_taught(3.0)))
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'task_weight'", (bad,))
    con.commit()
    con.close()
    with pytest.raises(store.StateError, match="task_weight"):
        store.load(path)
    doc = store.dump_json(store.snapshot(_taught(3.0)))
    doc["task_weight"] = bad
    with pytest.raises(store.StateError, match="task_weight"):
        store.load_json(doc)


def test_a_shared_draw_keeps_decisions_reproducible() -> None:
    """Same seed, same decisions (the shared draw takes one normal per decision)."""
    runs = []
    for _ in range(2):
        learner = BanditLearner(seed=11, shared_draw=True, compete_c=0.0)
        learner.arm("dear").update(learner.vector("prompt 1", "qa"), 0.9)
        runs.append([learner.rank(_query(i)).scores["dear"] for i in range(20)])
    assert runs[0] == runs[1]
    assert len(set(np.round(runs[0], 6))) > 1  # the draws do move


def test_forced_exploration_is_greedy_but_keeps_observing_each_arm() -> None:
    """The levers' greedy learner with forced exploration: the dear arm known better
    (quality 0.9 against the cheap arm's 0.3) goes first unless the coin, with
    probability c / (1 + n) for the least-observed arm, puts the cheap one first; with
    c = 0 never, with c = 5 and n = 9 about half the time."""
    from benchmarks._routing_levers import ForcedExploration

    def firsts(c: float) -> list[str]:
        learner = ForcedExploration(seed=5, explore_c=c)
        for i in range(9):
            learner.arm("cheap").update(learner.vector(f"prompt {i}", "qa"), 0.3)
        for i in range(30):
            learner.arm("dear").update(learner.vector(f"prompt {i}", "qa"), 0.9)
        return [learner.rank(_query(i)).order[0] for i in range(400)]

    assert set(firsts(0.0)) == {"dear"}
    share = firsts(5.0).count("cheap") / 400
    assert 0.4 < share < 0.6, share


def _three(i: int, lane: QoS = QoS.SILVER) -> RouteQuery:
    cands = (
        CandidateView("bad", 70.0, 50.0),
        CandidateView("cheap", 70.0, 100.0),
        CandidateView("dear", 70.0, 2000.0),
    )
    return RouteQuery(f"d{i}", "t", "default", "qa", lane, f"prompt {i}", cands)


def _competing(
    seed: int = 5,
    c: float = 5.0,
    cheap_n: int = 19,
    pick: str = "least",
    learner: type = BanditLearner,
) -> BanditLearner:
    """The dear arm known good (0.9 on 40 answers), the cheap one seen at 0.75 (it may be
    worth it once its cost counts), the bad one known bad: 0.05 on 12 answers, fewer
    than the cheap one's, so it is the least-observed arm of all."""
    if learner is BanditLearner:
        made = BanditLearner(
            seed=seed, compete_c=c, compete_z=3.0, compete_pick=pick, compete_max=3
        )
    else:
        made = learner(seed=seed, explore_c=c)
    return _three_arms(made, cheap_n)


def _three_arms(made: BanditLearner, cheap_n: int = 19) -> BanditLearner:
    """``made`` taught the three arms of :func:`_competing`."""
    for i in range(cheap_n):
        made.arm("cheap").update(made.vector(f"prompt {i}", "qa"), 0.75)
    for i in range(40):
        made.arm("dear").update(made.vector(f"prompt {i}", "qa"), 0.9)
    for i in range(12):
        made.arm("bad").update(made.vector(f"prompt {i}", "qa"), 0.05)
    return made


def test_competing_exploration_is_greedy_and_explores_only_the_competitors() -> None:
    """compete_c > 0: the expected reward's best goes first, except that with probability
    c / (1 + n), n the least-observed competitor's answers, that competitor does; a
    candidate known worse for the prompt (its interval far below the best's) never goes
    first although it is the cheapest and the least observed -- the levers' forced
    exploration over every candidate, on the same state, does put it first."""
    from benchmarks._routing_levers import ForcedExploration

    learner = _competing()
    firsts = [learner.rank(_three(i)).order[0] for i in range(800)]
    assert "bad" not in firsts
    share = firsts.count("cheap") / 800  # c / (1 + n) = 5 / 20
    assert 0.18 < share < 0.32, share
    forced = _competing(learner=ForcedExploration)
    assert "bad" in [forced.rank(_three(i)).order[0] for i in range(800)]
    # the rankings say which were explored: the cheap arm's, not the greedy best
    learner = _competing()
    ranks = [learner.rank(_three(i)) for i in range(100)]
    assert all(r.explored == (r.order[0] == "cheap") for r in ranks)
    assert learner.explorations == sum(r.explored for r in ranks)


def test_competing_exploration_fades_as_the_competitor_is_observed() -> None:
    """The coin's probability falls with the competitor's answers: 19 -> about 1/4,
    99 -> about 1/20 (c = 5); the Thompson draw among the competitors (the other pick)
    explores no more than the forced pick of the least observed."""
    shares = {}
    for n, pick in ((19, "least"), (99, "least"), (19, "draw")):
        learner = _competing(cheap_n=n, pick=pick)
        firsts = [learner.rank(_three(i)).order[0] for i in range(800)]
        assert "bad" not in firsts
        shares[n, pick] = firsts.count("cheap") / 800
    assert shares[99, "least"] < 0.1, shares
    assert shares[19, "least"] > 0.18, shares
    assert 0 < shares[19, "draw"] <= shares[19, "least"], shares


def test_competing_exploration_is_bounded_by_lane() -> None:
    """[ATP-FEED-006] The coin is scaled by the lane's exploration factor: gold (0.2)
    explores least, bronze (1.5) most; in gold a competitor predicted below the quality
    floor is never first while another candidate meets it."""
    counts = {}
    for lane in (QoS.GOLD, QoS.SILVER, QoS.BRONZE):
        learner = _competing()
        counts[lane] = sum(learner.rank(_three(i, lane)).explored for i in range(600))
    assert counts[QoS.GOLD] < counts[QoS.SILVER] < counts[QoS.BRONZE], counts
    assert counts[QoS.GOLD] > 0, counts  # bounded, not switched off
    learner = _competing()
    learner.lanes = LaneBounds(gold_floor=0.8)  # cheap (0.75) is below it, dear meets it
    for i in range(300):
        r = learner.rank(_three(i, QoS.GOLD))
        assert r.order[0] == "dear", r


def test_competing_exploration_keeps_decisions_reproducible_and_checks_settings() -> None:
    runs = [[_competing(seed=7).rank(_three(i)).order for i in range(50)] for _ in range(2)]
    assert runs[0] == runs[1]
    bads: list[dict[str, object]] = [
        {"compete_c": -1.0},
        {"compete_c": float("nan")},
        {"compete_z": -0.5},
        {"compete_pick": "random"},
        {"compete_max": -1},
    ]
    for bad in bads:
        with pytest.raises(ValueError, match="compete"):
            BanditLearner(**bad)  # type: ignore[arg-type]


def test_the_default_explores_among_competitors_for_two_candidates_only() -> None:
    """The default learner: a decision between two candidates is greedy with exploration
    among the competitors (the two-model sources gain with it), one among three or more is
    plain Thompson sampling (the eleven-model source loses with it; benchmarks/RESULTS.md):
    the same rankings, seed for seed, as the learner configured each way explicitly."""
    two = ("cheap", "dear")

    def orders(learner: BanditLearner, pair: bool) -> list[tuple[str, ...]]:
        out = []
        for i in range(200):
            q = _three(i)
            if pair:
                q = replace(q, candidates=tuple(c for c in q.candidates if c.name in two))
            out.append(learner.rank(q).order)
        return out

    default_two = orders(_three_arms(BanditLearner(seed=5)), True)
    assert default_two == orders(
        _three_arms(BanditLearner(seed=5, compete_c=20.0, compete_z=3.0, compete_pick="draw")), True
    )
    assert default_two != orders(_three_arms(BanditLearner(seed=5, compete_c=0.0)), True)
    default_three = orders(_three_arms(BanditLearner(seed=5)), False)
    assert default_three == orders(_three_arms(BanditLearner(seed=5, compete_c=0.0)), False)
