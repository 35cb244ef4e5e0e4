"""The online learner's exploration levers (issue 13 items 2 and 6; benchmarks/RESULTS.md,
"online exploration"): the task type's feature weight (a weaker prior on the task type:
a new task type is as uncertain as a new adapter, a seen one is learned from a few
answers), the shared Thompson draw, and the state that carries the feature weight
(format version 2; version 1 still read). In-process, small fixed workloads."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from atp_proto.frames import QoS
from atp_proto.router.routing.learner import BanditLearner, Featurizer, store
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
        learner = BanditLearner(seed=3, shared_draw=shared)
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
        learner = BanditLearner(seed=11, shared_draw=True)
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
