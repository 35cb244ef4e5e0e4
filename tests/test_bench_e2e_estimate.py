"""``atp bench e2e --estimate-max-age-ms``: the persona adapters' Estimate max_age_ms
(ATP-BUDGET-018), parsed as a uint32 (bad usage is exit 2, one line), passed to the
adapters as their ``max_age_ms`` option, and said in the load table."""

from __future__ import annotations

import argparse
import subprocess
import sys

from atp_proto.testing.processes import clean_env
from benchmarks import bench_e2e
from benchmarks._load import scenarios


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    bench_e2e.add_options(p)
    return p.parse_args(argv)


def test_default_and_zero_reach_the_persona_options() -> None:
    o = bench_e2e.options(_parse())
    assert o.estimate_max_age_ms == 1000
    assert scenarios._persona(o)["max_age_ms"] == "1000"
    o = bench_e2e.options(_parse("--estimate-max-age-ms", "0"))
    assert scenarios._persona(o)["max_age_ms"] == "0"


def test_the_table_says_whether_estimates_are_reused() -> None:
    run = {
        "workers": 2, "streams_per_s": 1.0, "frames_per_s": 5.0, "lanes": {}, "router": None,
        "total": {"ttfp_ms": {"p50": 1, "p95": 1, "p99": 1, "max": 1}},
    }  # fmt: skip
    pcts = {"p50": 0.5, "p95": 0.5, "p99": 0.5, "max": 0.5}
    for age, says in ((1000, "1,000 ms"), (0, "0 (no reuse)")):
        load = {
            "router": run, "direct": run, "added": {"ttfp_ms": pcts, "ttf_ms": pcts},
            "estimate_max_age_ms": age,
        }  # fmt: skip
        rows = bench_e2e.table_rows({"results": {"load": load}})
        (row,) = [r for r in rows if "max_age_ms" in r[0]]
        assert row[1] == says


def test_a_bad_value_is_bad_usage() -> None:
    for bad in ("-1", "4294967296", "soon"):
        proc = subprocess.run(
            [sys.executable, "-m", "atp_proto", "bench", "e2e", "--estimate-max-age-ms", bad],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "--estimate-max-age-ms" in last and "Traceback" not in proc.stderr


def test_the_table_says_the_measured_reuse_rate() -> None:
    run = {
        "workers": 2, "streams_per_s": 1.0, "frames_per_s": 5.0, "lanes": {}, "router": None,
        "total": {"ttfp_ms": {"p50": 1, "p95": 1, "p99": 1, "max": 1}},
    }  # fmt: skip
    pcts = {"p50": 0.5, "p95": 0.5, "p99": 0.5, "max": 0.5}
    for est, says in (
        ({"called": 3, "reused": 97, "reuse_rate": 0.97}, "97.0%"),
        ({"called": 0, "reused": 0, "reuse_rate": None}, "— (not read)"),
    ):
        load = {
            "router": run, "direct": run, "added": {"ttfp_ms": pcts, "ttf_ms": pcts},
            "estimate_max_age_ms": 1000, "estimates": est,
        }  # fmt: skip
        rows = bench_e2e.table_rows({"results": {"load": load}})
        (row,) = [r for r in rows if "estimates reused" in r[0]]
        assert row[1] == says
