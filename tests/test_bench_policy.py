"""``atp bench policy`` (benchmarks/bench_policy.py): structure only, no timing assertions."""

from __future__ import annotations

import json

from atp_proto.cli import main


def test_quick_json(capsys) -> None:  # type: ignore[no-untyped-def]
    rc = main(["bench", "policy", "--quick", "--json"])
    out, _ = capsys.readouterr()
    result = json.loads(out)
    assert rc == 0 and result["benchmark"] == "policy" and result["judged"] is False
    rows = result["results"]
    assert set(rows) == {
        "claims_only_us",
        "query_recompiling_us",
        "bundle_uncached_us",
        "decide_cached_us",
    }
    assert all(isinstance(v, float) and v > 0 for v in rows.values())
    assert [g["unit"] for g in result["goals"]] == ["x", "x"]
    assert result["machine"]["regopy"] == "1.5.2"


def test_piped_report_is_not_wrapped_at_80_columns(capsys) -> None:  # type: ignore[no-untyped-def]
    # stdout is pytest's capture, not a terminal: the report is laid out 160 wide
    # (benchmarks/_report.py report_console), so its summary lines stay whole
    assert main(["bench", "policy", "--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    goals = [ln for ln in lines if ln.startswith("not judged (quick run)")]
    assert len(goals) == 2 and all(ln.rstrip().endswith("rough run)") for ln in goals), lines
    assert max(len(ln) for ln in lines) > 80  # one line at least that 80 columns would wrap
