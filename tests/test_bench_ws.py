"""``atp bench ws`` (benchmarks/bench_ws.py via atp_proto/_cli/bench.py).

Structure and positivity only: no timing assertions, machines are noisy. The quick run
starts two routers, two echo servers (trio-websocket, picows) and a few client processes
(about 10-20 s).
"""

from __future__ import annotations

import json
import statistics
import sys

import pytest

from atp_proto.cli import main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc, forks clients")


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_quick_json(capsys):
    rc = main(["bench", "ws", "--quick", "--json"])
    out, _ = capsys.readouterr()
    result = json.loads(out)  # stdout holds the JSON object and nothing else
    assert rc == 0  # a quick run is not judged (benchmarks/_report.py)
    assert result["judged"] is False
    assert result["benchmark"] == "ws"
    assert result["settings"]["quick"] is True
    assert result["date"].endswith("+00:00")
    machine = result["machine"]
    assert machine["cpu_count"] >= 1
    for key in ("platform", "python", "cpu_model", "trio", "trio_websocket", "picows"):
        assert isinstance(machine[key], str) and machine[key]

    settings = result["settings"]
    res = result["results"]
    tp = res["throughput"]
    assert tp["partials"] == settings["streams"] * settings["frames_per_stream"]
    assert tp["finals"] == settings["streams"]
    for key in (
        "frames_per_s",
        "steady_frames_per_s",
        "seconds",
        "partial_frame_bytes",
        "router_cpu_pct",
        "client_cpu_pct",
    ):
        assert _positive(tp[key]), key
    assert tp["partial_frame_bytes"] > settings["chunk_chars"]

    base = res["baseline"]
    assert _positive(base["messages_per_s"]) and base["messages"] > 0
    assert base["message_bytes"] == 200

    # issue 14 item 6: the picows echo, driven by the relay's own client and workload
    pic = res["picows"]
    assert pic["server"].startswith("picows ")
    assert pic["messages"] == settings["streams"] * settings["frames_per_stream"]
    assert pic["message_bytes"] == 200 and pic["client_processes"] == tp["client_processes"]
    assert pic["sessions"] == tp["sessions"]
    for key in ("messages_per_s", "seconds", "client_cpu_pct"):
        assert _positive(pic[key]), key
    assert pic["server_cpu_pct"] >= 0
    # the goal's ratio: relay and echo alternated, medians of the rounds compared
    rounds = settings["picows_rounds"]
    assert pic["rounds"] == rounds >= 2
    assert len(pic["round_messages_per_s"]) == len(pic["relay_round_frames_per_s"]) == rounds
    assert pic["relay_round_frames_per_s"][0] == tp["frames_per_s"]
    assert pic["relay_vs_echo"] == pytest.approx(
        statistics.median(pic["relay_round_frames_per_s"])
        / statistics.median(pic["round_messages_per_s"])
    )
    assert pic["messages_per_s"] == pytest.approx(statistics.median(pic["round_messages_per_s"]))
    ref = pic["picows_client"]  # the reference: the same echo with picows' own client
    assert ref["messages"] == pic["messages"] and ref["sessions"] == pic["sessions"]
    assert _positive(ref["messages_per_s"])

    lat = res["latency"]
    assert lat["background_open_during_probes"] == settings["background_streams"]
    assert lat["probes"] == settings["probes"]
    for dist in (lat["syn_to_first_partial_ms"], lat["partial_gap_ms"]):
        assert dist["n"] > 0
        assert 0 < dist["p50"] <= dist["p99"] <= dist["max"]

    sess = res["sessions"]
    assert sess["sessions"] == settings["idle_sessions"]
    assert sess["rss_after_bytes"] >= sess["rss_before_bytes"] > 0
    assert _positive(sess["rss_at_10k_bytes"]) and _positive(sess["sessions_per_s"])

    goals = result["goals"]
    assert len(goals) == 5
    by_name = {g["name"]: g for g in goals}
    (vs_picows,) = [g for n, g in by_name.items() if n.startswith("relay frames/s vs picows")]
    assert vs_picows["target"] == 1.0 and vs_picows["unit"] == "x"
    assert vs_picows["measured"] == pic["relay_vs_echo"]
    for g in goals:
        assert isinstance(g["pass"], bool) and g["judged"] is False
        assert _positive(g["measured"])
        assert _positive(g["target"]) and g["op"] in (">=", "<=")
    assert result["all_goals_pass"] == all(g["pass"] for g in goals)
