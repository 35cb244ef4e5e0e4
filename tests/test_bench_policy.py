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
