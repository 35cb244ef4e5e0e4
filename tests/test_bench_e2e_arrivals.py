"""``atp bench e2e``'s open loop spreads the streams of all its flows (lane x load
process) over time instead of making every flow's stream due at the same instant."""

from __future__ import annotations

import itertools

from benchmarks._load.scenarios import Options, _plans


def _due_times(o: Options, horizon: float) -> list[float]:
    out = []
    for plan in _plans(o, "direct", None, {"p1": "grpc://127.0.0.1:1"}):
        for flow in plan.flows:
            i = 0
            while (due := flow.start + i / flow.rate) < horizon:
                out.append(due)
                i += 1
    return sorted(out)


def test_equal_lanes_arrive_evenly_spaced() -> None:
    o = Options(quick=False, rate=1000.0, procs=2)  # 3 lanes x 2 processes
    due = _due_times(o, 0.1)
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert len(due) == 100
    assert min(gaps) > 0.99e-3 and max(gaps) < 1.01e-3  # 1 / rate apart, no burst


def test_unequal_lanes_never_share_an_instant_at_the_start() -> None:
    o = Options(quick=False, rate=600.0, procs=2, lanes=(("gold", 1.0), ("bronze", 3.0)))
    firsts = [f.start for p in _plans(o, "direct", None, {}) for f in p.flows]
    assert len(set(firsts)) == len(firsts) == 4
    # every flow still offers its share: the phase is below one of its periods
    for p in _plans(o, "direct", None, {}):
        for f in p.flows:
            assert 0 <= f.start < 1 / f.rate
