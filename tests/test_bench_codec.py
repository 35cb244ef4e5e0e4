"""``atp bench codec`` (benchmarks/bench_codec.py via atp_proto/_cli/bench.py).

Structure only: no timing assertions, machines are noisy.
"""

from __future__ import annotations

import json
import sys

from atp_proto.cli import main

OPERATIONS = {
    "encode",
    "decode",
    "round-trip",
    "decode + payload_obj()",
    "obj -> obj round-trip",
}
FRAMES = {"SYN (seed)", "PARTIAL 200 B", "DATA 64 KiB"}


def test_quick_json(capsys):
    rc = main(["bench", "codec", "--quick", "--json"])
    out, _ = capsys.readouterr()
    result = json.loads(out)  # stdout holds the JSON object and nothing else
    assert rc == 0  # a quick run is not judged (benchmarks/_report.py)
    assert result["judged"] is False
    assert result["benchmark"] == "codec"
    assert result["settings"]["quick"] is True
    machine = result["machine"]
    assert machine["cpu_count"] >= 1
    for key in ("platform", "python", "cpu_model", "cbor2"):
        assert isinstance(machine[key], str) and machine[key]
    assert result["date"].endswith("+00:00")

    assert set(result["frames"]) == FRAMES
    sizes = result["frames"]["PARTIAL 200 B"]
    assert sizes["payload_bytes"] == 200
    assert sizes["frame_bytes"] == 24 + 200
    assert result["frames"]["DATA 64 KiB"]["payload_bytes"] == 64 * 1024

    rows = result["results"]
    assert {(r["frame"], r["operation"]) for r in rows} == {
        (f, op) for f in FRAMES for op in OPERATIONS
    }
    for r in rows:
        for key in (
            "ours_us",
            "ours_frames_per_s",
            "json_us",
            "cbor2_us",
            "orjson_us",
            "msgpack_us",
            "speedup_vs_cbor2",
            "speedup_vs_json",
            "speedup_vs_orjson",
            "speedup_vs_msgpack",
        ):
            assert isinstance(r[key], float) and r[key] > 0, (r["frame"], r["operation"], key)
        assert all(n >= 1 for n in r["iterations"].values())
    for key in ("decode_gb_s", "decode_payload_obj_gb_s", "cbor2_loads_gb_s", "json_loads_gb_s"):
        assert result["throughput"][key] > 0

    goals = result["goals"]
    assert len(goals) == 5  # incl. the two against orjson (issue 10 item 6)
    for g in goals:
        assert isinstance(g["pass"], bool) and g["judged"] is False
        assert g["measured"] > 0
        assert g["target"] > 0 and g["op"] in (">=", "<=") and g["target_text"]
    assert result["all_goals_pass"] == all(g["pass"] for g in goals)


def test_quick_table(capsys):
    rc = main(["bench", "codec", "--quick"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "PARTIAL 200 B" in out
    assert out.count("not judged (quick run)") == 5


def test_missing_benchmarks_package_is_a_usage_error(capsys, monkeypatch):
    # as when atp-proto is installed without its benchmarks package: the import fails
    monkeypatch.setitem(sys.modules, "benchmarks", None)
    monkeypatch.setitem(sys.modules, "benchmarks.bench_codec", None)
    rc = main(["bench", "codec", "--quick"])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "benchmark 'codec' is not installed: no module benchmarks.bench_codec" in err


def test_bench_without_a_benchmark_shows_help(capsys):
    rc = main(["bench"])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "codec" in err
