"""``--workers N --routing-state FILE``: the workers' rows of one SQLite file, written at
once by real processes, and their merge (atp_proto.router.routing.learner.store)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from atp_proto.router.routing.learner import store
from atp_proto.router.routing.learner.bandit import BanditLearner

_WRITER = """
import sys
import numpy as np
from atp_proto.router.routing.learner import store
from atp_proto.router.routing.learner.bandit import BanditLearner
path, worker = sys.argv[1], int(sys.argv[2])
learner = BanditLearner()
rng = np.random.default_rng(worker)
for i in range(15):
    x = np.zeros(learner.features.dim)
    x[rng.integers(0, learner.features.dim, 8)] = 1.0
    learner.arm(f"arm{worker}").update(x, 0.9)
    store.save(path, store.snapshot(learner), worker=worker)
"""


def _learned(learner: BanditLearner, name: str, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = np.zeros(learner.features.dim)
        x[0] = 1.0
        x[rng.integers(1, learner.features.dim, 6)] = 1.0
        learner.arm(name).update(x, float(rng.random()))
        learner.arm(name).observe_latency(float(rng.integers(10, 100)))


def test_workers_writing_at_once_neither_fail_nor_overwrite_each_other(tmp_path: Path) -> None:
    """Two processes each saving their state 15 times as fast as they can into one file:
    no write fails (a writer waits for the other), the file is intact, it is in WAL mode,
    and each worker's rows hold its own last state."""
    path = tmp_path / "state.sqlite"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w)], stderr=subprocess.PIPE)
        for w in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        con.close()
    for w in (0, 1):
        arms = store.load(path, worker=w).arms
        assert set(arms) == {f"arm{w}"} and arms[f"arm{w}"].n == 15


def test_merge_equals_one_learner_that_saw_every_observation(tmp_path: Path) -> None:
    """A fleet's state (arm "a" learned before), two workers that started from it and
    learned apart (both "a", one also "b"), merged: every arm is what one learner that
    saw all the observations holds (posterior, counters), each counted once; the worker
    rows are gone, and a second merge changes nothing."""
    path = tmp_path / "state.sqlite"
    base = BanditLearner()
    _learned(base, "a", 1, 20)
    store.save(path, store.snapshot(base))
    workers = []
    for w in (0, 1):
        learner = BanditLearner()
        store.apply(learner, store.load(path, worker=w))  # no rows yet: the fleet's
        _learned(learner, "a", 10 + w, 15)
        if w == 1:
            _learned(learner, "b", 30, 5)
        store.save(path, store.snapshot(learner), worker=w)
        workers.append(learner)
    assert store.load(path).arms["a"].n == 20  # the fleet's rows are untouched by workers

    whole = BanditLearner()
    _learned(whole, "a", 1, 20)
    _learned(whole, "a", 10, 15)
    _learned(whole, "a", 11, 15)
    _learned(whole, "b", 30, 5)
    assert store.merge_workers(path) == 2
    merged = store.load(path).arms
    for name in ("a", "b"):
        got, want = merged[name], whole.arms[name]
        assert np.allclose(got.a_inv, want.a_inv, atol=1e-9)
        assert np.allclose(got.b, want.b)
        assert (got.n, got.latency_n, got.feedback_n) == (want.n, want.latency_n, want.feedback_n)
        assert abs(got.q_sum - want.q_sum) < 1e-9
    assert store.load(path, worker=1).arms["a"].n == 50  # no rows left: the merged state
    assert store.merge_workers(path) == 0


def test_merge_of_workers_that_shared_through_redis_keeps_the_most_advanced(
    tmp_path: Path,
) -> None:
    """With --redis each worker holds the fleet's posterior: the merge keeps the one that
    saw most, it does not add them (which would count each observation N times)."""
    path = tmp_path / "state.sqlite"
    store.save(path, store.snapshot(BanditLearner()))
    ahead = BanditLearner()
    _learned(ahead, "a", 1, 12)
    behind = BanditLearner()
    _learned(behind, "a", 1, 10)
    store.save(path, store.snapshot(ahead), worker=0)
    store.save(path, store.snapshot(behind), worker=1)
    assert store.merge_workers(path, shared=True) == 2
    got = store.load(path).arms["a"]
    assert got.n == 12 and np.array_equal(got.a_inv, ahead.arms["a"].a_inv)
