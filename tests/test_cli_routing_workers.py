"""``atp routing show`` on a state file that ``atp serve --workers N`` wrote: the fleet's
(merged) rows, and each worker's own rows until they are merged; ``--worker N`` shows one
worker's. The file is made as the workers make it (store.save with worker=i)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from atp_proto.router.routing.learner import BanditLearner, store

ROOT = Path(__file__).resolve().parents[1]


def _atp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atp_proto", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _state(observations: dict[str, float]) -> store.State:
    """A learner's state whose arms have seen ``observations`` (name -> count)."""
    learner = BanditLearner()
    base = store.snapshot(learner)
    arms = {}
    for name, n in observations.items():
        arm = learner.arm(name)
        arms[name] = dataclasses.replace(arm, n=n, q_sum=n * 0.5, failures=int(n) % 3)
    return store.State(base.dim, base.ridge, arms)


def test_show_lists_each_workers_rows_and_one_with_worker(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite"
    store.save(path, _state({"cheap": 10.0}))  # the fleet's merged state
    store.save(path, _state({"cheap": 12.0, "dear": 3.0}), worker=0)
    store.save(path, _state({"cheap": 15.0}), worker=1)

    doc = json.loads(_atp("routing", "show", "--state", str(path), "--json").stdout)
    assert doc["arms"]["cheap"]["observations"] == 10
    assert set(doc["workers"]) == {"0", "1"}
    assert doc["workers"]["0"]["dear"]["observations"] == 3
    assert doc["workers"]["1"]["cheap"]["observations"] == 15

    one = json.loads(
        _atp("routing", "show", "--state", str(path), "--worker", "1", "--json").stdout
    )
    assert one["worker"] == 1 and set(one["arms"]) == {"cheap"}
    assert one["arms"]["cheap"]["observations"] == 15

    table = _atp("routing", "show", "--state", str(path))
    assert table.returncode == 0, table.stderr
    assert "the fleet's" in table.stdout and "not merged yet" in table.stdout
    assert "dear" in table.stdout  # worker 0's row

    missing = _atp("routing", "show", "--state", str(path), "--worker", "7")
    assert missing.returncode == 1
    assert "no rows of worker 7 (workers with rows: 0, 1)" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    bad = _atp("routing", "show", "--state", str(path), "--worker", "x")
    assert bad.returncode == 2 and "worker index" in bad.stderr


def test_show_of_a_merged_file_has_no_worker_rows(tmp_path: Path) -> None:
    path = tmp_path / "merged.sqlite"
    store.save(path, _state({"cheap": 4.0}))
    store.save(path, _state({"cheap": 6.0}), worker=0)
    assert store.merge_workers(path) == 1
    doc = json.loads(_atp("routing", "show", "--state", str(path), "--json").stdout)
    assert "workers" not in doc and doc["arms"]["cheap"]["observations"] > 4
    table = _atp("routing", "show", "--state", str(path))
    assert "not merged yet" not in table.stdout
    out = _atp("routing", "show", "--state", str(path), "--worker", "0")
    assert out.returncode == 1 and "none (the fleet's merged state only)" in out.stderr
