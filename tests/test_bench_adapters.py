"""``atp bench adapters`` (benchmarks/bench_adapters.py via atp_proto/_cli/bench.py).

Structure only, no timing assertions: a quick run (one round, a few calls per client
against one SDK adapter process) reports its goals without judging them and exits 0.
"""

from __future__ import annotations

import json

from atp_proto.cli import main


def test_quick_json_reports_goals_not_judged(capsys):
    rc = main(["bench", "adapters", "--quick", "--json"])
    result = json.loads(capsys.readouterr().out)  # stdout holds the JSON object only
    assert rc == 0
    assert result["benchmark"] == "adapters" and result["params"]["quick"] is True
    assert result["judged"] is False
    assert {"atp-trio", "grpclib"} <= set(result["results"])
    assert result["results"]["atp-trio"]["stream_chunks_per_s"] > 0
    goals = result["goals"]
    assert [g["unit"] for g in goals] == ["x", "ms"]
    for g in goals:
        assert g["measured"] > 0 and g["target"] > 0 and g["judged"] is False
        assert isinstance(g["pass"], bool)
    assert result["all_goals_pass"] == all(g["pass"] for g in goals)
    for key in ("cpu_count", "python", "grpclib", "h2"):
        assert result["machine"][key]
