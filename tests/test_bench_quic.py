"""``atp bench quic`` (benchmarks/bench_quic.py via atp_proto/_cli/bench.py).

Structure and positivity only: no timing assertions, machines are noisy. The quick run
starts a router and two aioquic echo servers (about 10-20 s).
"""

from __future__ import annotations

import json
import sys

import pytest

from atp_proto.cli import main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="forks a router and echoes")


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@pytest.mark.slow
def test_quick_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "quic", "--quick", "--json"])
    out, _ = capsys.readouterr()
    result = json.loads(out)  # stdout holds the JSON object and nothing else
    assert rc == 0  # a quick run is not judged
    assert result["benchmark"] == "quic" and result["judged"] is False
    assert result["settings"]["quick"] is True
    res = result["results"]
    for key in ("router", "baseline_default", "baseline_tuned"):
        assert all(_positive(v) for v in res[key].values()), res[key]
    # CPU per frame of each end: numbers, never negative (a quick run's may round to 0:
    # the kernel counts CPU time in 10 ms ticks); ours and the echo's are both reported
    cpu = res["cpu_us_per_frame"]
    assert set(cpu) == {
        "router",
        "our_client",
        "default_echo_server",
        "default_echo_client",
        "tuned_echo_server",
        "tuned_echo_client",
    }
    assert all(isinstance(v, float) and v >= 0 for v in cpu.values()), cpu
    assert _positive(cpu["our_client"]) and _positive(cpu["tuned_echo_client"]), cpu
    short = res["router_short_prompt"]  # the same PARTIALs from a 200-byte prompt
    assert _positive(short["frames_per_s"]) and _positive(short["vs_tuned"]), short
    assert short["router_cpu_us"] >= 0 and short["client_cpu_us"] >= 0, short
    lat = res["latency_first_partial_ms"]
    assert lat["open_streams"] == result["settings"]["open_streams"]
    assert _positive(lat["p50"]) and lat["p50"] <= lat["p99"]
    assert _positive(res["slow_stream"]["ratio"])
    udp = res["our_client_udp"]  # our client's datagrams and system calls, both ways
    assert udp["datagrams_received"] > 0 and udp["receive_calls"] > 0
    assert 0 < udp["send_calls"] <= udp["datagrams_sent"]
    assert isinstance(udp["gso"], bool) and isinstance(udp["gro"], bool)
    names = [g["name"] for g in result["goals"]]
    assert len(names) == 5 and all(g["judged"] is False for g in result["goals"])
