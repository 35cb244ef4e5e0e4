"""``atp routing train | show | export | import`` as a user runs them, on a small file in
the routing-data format made here; and the routing benchmark's metrics and a quick run of
``atp bench routing`` through the real router and replay adapter processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from atp_proto.testing.processes import clean_env
from benchmarks._routing_eval import baselines, curve_from_points, curve_from_scores, pick_pair

ROOT = Path(__file__).resolve().parents[1]


def _atp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atp_proto", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _data(path: Path, n: int = 48) -> Path:
    """Two models: 'small.v1' (cheap) fails the long prompts, 'big' (dear) passes all."""
    with path.open("w") as fh:
        for i in range(n):
            long = i % 3 == 0
            prompt = ("a long and involved multi step question " * 8) if long else "short one"
            rec = {
                "id": f"syn/{i:03d}",
                "source": "synthetic",
                "category": "qa",
                "prompt": f"{prompt} number {i}",
                "bucket": (i * 37) % 100,
                "models": {
                    "small.v1": {
                        "correct": 0 if long else 1,
                        "in_tokens": 20,
                        "out_tokens": 10,
                        "cost_usd": 0.00003,
                    },
                    "big": {"correct": 1, "in_tokens": 20, "out_tokens": 12, "cost_usd": 0.002},
                },
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def test_train_show_export_import_round_trip(tmp_path: Path) -> None:
    """[ATP-FEED-007] Train on a file, show what was learned, export it, import it into
    another state file, and export that: the same document."""
    data = _data(tmp_path / "d.jsonl")
    state = tmp_path / "s.sqlite"
    out = _atp("routing", "train", str(data), "--state", str(state), "--buckets", "0-59", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    trained = summary["records"]
    assert 0 < trained < 48
    # model names become adapter names (a '.' is not allowed in those)
    assert summary["models"] == {"big": trained, "small_v1": trained}
    shown = json.loads(_atp("routing", "show", "--state", str(state), "--json").stdout)
    assert shown["arms"]["big"]["mean_quality"] == 1.0
    assert shown["arms"]["small_v1"]["mean_quality"] < 1.0
    table = _atp("routing", "show", "--state", str(state))
    assert table.returncode == 0 and "small_v1" in table.stdout
    exported = tmp_path / "e.json"
    assert _atp("routing", "export", "--state", str(state), "-o", str(exported)).returncode == 0
    other = tmp_path / "o.sqlite"
    imp = _atp("routing", "import", str(exported), "--state", str(other))
    assert imp.returncode == 0, imp.stderr
    again = _atp("routing", "export", "--state", str(other))
    assert json.loads(again.stdout) == json.loads(exported.read_text())
    # training again adds to what the state knows
    _atp("routing", "train", str(data), "--state", str(state))
    shown2 = json.loads(_atp("routing", "show", "--state", str(state), "--json").stdout)
    assert shown2["arms"]["big"]["observations"] == trained + 48


def test_routing_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "models": {}}\nnot json\n')
    cases = [
        (("routing", "train", str(bad), "--state", str(tmp_path / "a.sqlite")), 2, "not JSON"),
        (("routing", "show", "--state", str(tmp_path / "missing.sqlite")), 2, "no such"),
        (("routing", "train", str(bad), "--state", "x", "--buckets", "9-1"), 2, "--buckets"),
        (("routing", "import", str(bad), "--state", str(tmp_path / "b.sqlite")), 2, "not JSON"),
    ]
    for args, code, text in cases:
        out = _atp(*args)
        assert out.returncode == code, (args, out.stderr)
        assert text in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_routellm_metrics() -> None:
    """PGR / APGR / CPT as RouteLLM defines them: a scorer that knows which prompts need
    the strong model beats random (0.5), a reversed one loses to it."""
    q_strong = [1, 1, 1, 1, 0, 1, 1, 1]
    q_weak = [0, 0, 1, 1, 0, 1, 1, 1]
    knows = curve_from_scores([1, 1, 0, 0, 0, 0, 0, 0], q_strong, q_weak)
    reverse = curve_from_scores([0, 0, 1, 1, 1, 1, 1, 1], q_strong, q_weak)
    assert knows.apgr > 0.8 and reverse.apgr < 0.5
    cpt = knows.cpt(1.0)  # 2 of 8 prompts need strong; shares round to whole prompts
    assert cpt is not None and 0.18 <= cpt <= 0.25
    assert knows.pgr[0] == 0 and knows.pgr[-1] == 1
    mid = curve_from_points([(0.5, 0.5)])
    assert mid.apgr == pytest.approx(0.5) and mid.cpt(0.8) == pytest.approx(0.8)


def test_pair_and_baselines(tmp_path: Path) -> None:
    from atp_proto.routing_data import read_records

    recs = read_records(_data(tmp_path / "d.jsonl"))
    assert pick_pair({"synthetic": recs}) == ("big", "small.v1")
    b = baselines(recs, "big", "small.v1", 0.5, seed=1)
    assert b["always_strong"]["quality"] == 1.0
    assert b["always_weak"]["quality"] == pytest.approx(2 / 3)
    assert b["oracle_pair"]["quality"] == 1.0
    assert b["oracle_pair"]["usd"] < b["always_strong"]["usd"]
    assert b["always_weak"]["quality"] < b["random_same_share"]["quality"] < 1.0


@pytest.mark.slow
def test_bench_routing_quick_through_the_real_router(tmp_path: Path) -> None:
    """``atp bench routing --quick`` on a small file: replay adapters and routers as
    processes, both modes, figures beside the baselines, not judged, exit 0."""
    data = _data(tmp_path / "d.jsonl", n=60)
    out = _atp("bench", "routing", "--quick", "--json", "--data", str(data), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert res["benchmark"] == "routing" and res["judged"] is False
    src = res["results"]["sources"]["synthetic"]
    assert (src["strong"], src["weak"]) == ("big", "small.v1")
    for mode in ("offline", "online"):
        table = src[mode]["table"]
        assert set(table) >= {
            "ours (through the router)",
            "always_strong",
            "always_weak",
            "random_same_share",
            "oracle_pair",
        }
        assert 0.0 <= table["ours (through the router)"]["share"] <= 1.0
    # the learner sees what the data teaches: long prompts to big, short to small
    assert src["offline"]["pair_curve"]["apgr"] > 0.6
    assert src["online"]["second_half_curve"]["apgr"] > 0.5


def test_serve_refuses_an_unusable_routing_state(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    for state in (str(tmp_path / "no" / "dir.sqlite"), str(junk)):
        out = _atp(
            "serve", "--no-auth", "--metrics", "off", "--ws", "127.0.0.1:0",
            "--learner", "bandit", "--routing-state", state,
        )  # fmt: skip
        assert out.returncode == 2
        assert "--routing-state" in out.stderr and "Traceback" not in out.stderr


def test_building_the_cli_parser_imports_no_routing_machinery() -> None:
    """`atp` builds its whole parser (and so imports bench_routing for add_options) on every
    command, `atp serve` and `atp adapter serve` included, i.e. in every process the test
    suite starts: numpy, trio and the learner must be imported only when the benchmark runs
    (they cost ~0.6 s per process start)."""
    code = (
        "import sys\n"
        "from atp_proto.cli import build_parser\n"
        "build_parser()\n"
        "heavy = [m for m in ('numpy', 'trio', 'atp_proto.testing', 'benchmarks._routing_run', "
        "'atp_proto.router.routing.learner') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
