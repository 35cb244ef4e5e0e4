"""``atp bench e2e`` end to end in a tiny configuration: the real CLI in a subprocess, a real
``atp serve`` and real gRPC persona adapter processes, forked load processes. Checks the
JSON's structure and internal consistency (counts add up, percentiles ordered, the overhead
is router minus direct), the QoS lanes' behaviour (bronze shed with EPREEMPT and
retry_after_ms, gold never: ATP-ADAPT-002, ATP-ERR-004) and the plot files. No timing
assertions: the numbers of a run on a shared host are what they are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atp_proto.testing.processes import clean_env

pytestmark = pytest.mark.slow

PCTS = ("p50", "p95", "p99", "max")


def _bench(*args: str, timeout: float = 120) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "atp_proto", "bench", "e2e", "--quick", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _ordered(d: dict[str, float]) -> None:
    assert 0 <= d["p50"] <= d["p95"] <= d["p99"] <= d["max"], d


def _check_run(run: dict[str, Any], lanes: set[str]) -> None:
    """One drive.run result: per-lane and total counters add up."""
    assert set(run["lanes"]) == lanes
    keys = ("requests", "attempts", "completed", "failed", "retries", "partials", "finals")
    for name, lane in run["lanes"].items():
        assert lane["requests"] > 0, name
        # every logical request ended one way, or is counted as unfinished
        assert lane["requests"] == lane["completed"] + lane["failed"] + lane["unfinished"]
        # every error was either retried or final
        assert sum(lane["errors"].values()) == lane["failed"] + lane["retries"]
        assert lane["attempts"] >= lane["requests"] - lane["unfinished"]
        assert lane["finals"] == lane["completed"]
        assert lane["ttf_ms"]["n"] == lane["completed"]
        assert lane["ttfp_ms"]["n"] <= lane["completed"]
        assert lane["shed"] == lane["errors"].get("EPREEMPT", 0)
        if lane["completed"]:
            _ordered(lane["ttfp_ms"])
            _ordered(lane["ttf_ms"])
            assert lane["ttfp_ms"]["p50"] <= lane["ttf_ms"]["p50"]
            assert lane["partials"] >= lane["completed"]  # persona: several chunks
    total = run["total"]
    for k in keys:
        assert total[k] == sum(lane[k] for lane in run["lanes"].values()), k
    assert total["ttf_ms"]["n"] == total["completed"]
    assert run["streams_per_s"] == pytest.approx(total["completed"] / run["window_s"])
    assert run["frames_per_s"] == pytest.approx(
        (total["partials"] + total["finals"]) / run["window_s"]
    )
    secs = [row["t"] for row in run["timeline"]]
    assert secs == sorted(secs)


def test_every_scenario_json_and_plots(tmp_path: Path) -> None:
    """One tiny run of all five scenarios (one process start: the test's time is mostly
    the routers' and adapters' start-ups)."""
    plots = tmp_path / "plots"
    r = _bench(
        "--duration",
        "1.0",
        "--warmup",
        "0.2",
        "--rate",
        "60",
        "--adapters",
        "1",
        "--sweep",
        "40",
        "--slow-readers",
        "30",
        "--open-streams",
        "150",
        "--plot",
        str(plots),
    )
    assert r["benchmark"] == "e2e" and r["judged"] is False
    assert r["settings"]["scenarios"] == [
        "load",
        "qos",
        "slow-readers",
        "capacity",
        "open-streams",
    ]
    assert {"cpu_model", "cpu_count", "python"} <= set(r["machine"])
    assert r["goals"] and all(g["judged"] is False for g in r["goals"])

    load = r["results"]["load"]
    # the persona adapters let the router reuse estimates for 1 s (ATP-BUDGET-018)
    assert load["estimate_max_age_ms"] == r["settings"]["estimate_max_age_ms"] == 1000
    # ... and the run measures it: the router's atp_estimates_total, scraped from its
    # metrics port after the load (the first preflight per class is a call)
    est = load["estimates"]
    assert est["called"] >= 1 and est["reused"] > 0
    assert est["reuse_rate"] == pytest.approx(est["reused"] / (est["called"] + est["reused"]))
    lanes = {"gold", "silver", "bronze"}
    _check_run(load["router"], lanes)
    _check_run(load["direct"], lanes)
    assert load["router"]["total"]["completed"] > 0 and load["direct"]["total"]["completed"] > 0
    for key in ("ttfp_ms", "ttf_ms"):
        for p in PCTS:
            want = load["router"]["total"][key][p] - load["direct"]["total"][key][p]
            assert load["added"][key][p] == pytest.approx(want)
    router = load["router"]["router"]
    assert router["processes"] >= 1 and router["rss_peak_bytes"] >= router["rss_start_bytes"] > 0
    assert router["cpu_s"] >= 0 and load["direct"]["router"] is None
    streams = load["router"]["streams_per_s"] * load["router"]["duration_s"]
    assert load["router_cpu_ms_per_stream"] == pytest.approx(1000 * router["cpu_s"] / streams)

    q = r["results"]["qos"]
    runs = q["runs"]
    _check_run(runs["gold_alone"], {"gold"})
    _check_run(runs["gold_beside_flood"], {"gold", "bronze"})
    _check_run(runs["bronze_recovery"], {"bronze"})
    flood = runs["gold_beside_flood"]["lanes"]
    assert flood["bronze"]["shed"] > 0  # 5x the admission's capacity: bronze is shed
    assert flood["bronze"]["shed_no_hint"] == 0  # ... with retry_after_ms (ATP-ERR-004)
    assert flood["gold"]["shed"] == 0  # ... and gold never (ATP-ADAPT-002)
    assert q["gold_p99_ratio"] == pytest.approx(
        flood["gold"]["ttfp_ms"]["p99"] / runs["gold_alone"]["lanes"]["gold"]["ttfp_ms"]["p99"]
    )

    steps = r["results"]["capacity"]["steps"]
    assert [s["offered"] for s in steps] == [40]
    best = r["results"]["capacity"]["capacity_streams_per_s"]
    # the offered rate of the highest step held (every stream finished, none failed)
    assert best == (float(steps[0]["offered"]) if steps[0]["held"] else 0.0)
    if steps[0]["held"]:
        assert steps[0]["streams_per_s"] >= 0.95 * steps[0]["offered"]

    # plots: PNGs and one page with every image inlined
    files = [Path(p) for p in r["plots"]]
    pngs = [p for p in files if p.suffix == ".png"]
    assert {p.name for p in pngs} >= {
        "load_latency_over_time.png",
        "load_latency_distribution.png",
        "capacity_sweep.png",
        "qos.png",
    }
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (plots / "index.html").read_text()
    assert page.startswith("<!doctype html>")
    assert page.count("src='data:image/png;base64,") == len(pngs)

    s = r["results"]["slow-readers"]
    assert s["held"] == 30 and not s["failures"]
    assert s["rss_bound_bytes"] == 30 * s["bound_per_reader_bytes"]
    assert (
        s["rss_growth_bytes"]
        == max(
            s["rss_with_readers_bytes"],
            s["rss_after_probes_bytes"],
            s["probes_beside"]["router"]["rss_peak_bytes"],
        )
        - s["rss_before_bytes"]
    )
    _check_run(s["probes_alone"], {"gold"})
    _check_run(s["probes_beside"], {"gold"})
    o = r["results"]["open-streams"]
    assert o["opened"] == 150 and o["sessions"] == 2 and not o["failures"]
    assert o["bytes_per_stream"] == pytest.approx(
        (o["rss_after_bytes"] - o["rss_before_bytes"]) / 150
    )


def test_registering_the_benchmark_keeps_the_cli_light() -> None:
    """`atp` imports bench_e2e to build its parser on every command (`atp serve` too): the
    module must not pull in trio, atp_proto.testing or hdrhistogram at import time."""
    code = (
        "import sys, benchmarks.bench_e2e as b, argparse\n"
        "b.add_options(argparse.ArgumentParser())\n"
        "heavy = [m for m in ('trio', 'atp_proto.testing', 'hdrh', 'matplotlib') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
