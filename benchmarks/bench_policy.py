"""Policy decision benchmark: ``decide()`` with a Rego policy beside its baselines.

Run it as ``atp bench policy [--json] [--quick]``.

Measured in the same run, in µs per decision (best of 5 runs, ``time.perf_counter_ns``,
gc off while timing), with ``examples/policy/policy.rego`` and
``examples/policy/routing.toml``:

* claims only: ``LayeredPolicy`` with no policy and no table (what a router without
  ``--policy`` does) — the floor;
* ``Interpreter.query()``: regopy evaluating the module from source on every call
  (it recompiles each time) — the naive way;
* bundle, uncached: the compiled bundle queried with a new input each time
  (``RegoEngine`` without its cache: every tenant differs);
* decide, cache hit: ``LayeredPolicy.decide`` with the policy and table, inputs that
  repeat (the router's steady state: the prompt is not policy input).

Goals (judged on a full run; ratios, so a loaded host moves both sides): the built
bundle ≥ 4× faster than ``query()``; a cached decision ≤ 10× the claims-only one.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atp_proto.frames import BudgetWindow, QoS
from atp_proto.messages import Task
from atp_proto.router.auth import Principal
from atp_proto.router.routing.policy import LayeredPolicy, PolicyInput, PolicyState
from atp_proto.router.routing.rego import ENTRYPOINT, RegoEngine
from atp_proto.router.routing.table import RoutingTable

from . import _harness, _report
from ._report import Goal

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policy"
GOAL_BUNDLE_SPEEDUP = 4.0
GOAL_CACHED_VS_CLAIMS = 10.0


def _best_us(fn: Callable[[], Any], n: int, repeats: int) -> float:
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeats):
            t = time.perf_counter_ns()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter_ns() - t) / n)
    finally:
        gc.enable()
    return best / 1e3


def _inp(tenant: str) -> PolicyInput:
    meta = {"task_type": "qa", "tool_permissions": [], "data_scope": ["no_secrets"]}
    principal = Principal("alice", tenant, QoS.GOLD, None, {"sub": "alice", "tenant": tenant})
    return PolicyInput(
        principal,
        Task("qa", "what is 2+2?", {}, meta, BudgetWindow(), 0),
        QoS.SILVER,
        ("cheap", "strong"),
    )


def run_benchmark(*, quick: bool = False) -> dict[str, Any]:
    import regopy

    n, repeats = (50, 2) if quick else (2000, 5)
    source = (EXAMPLES / "policy.rego").read_text()
    engine = RegoEngine.load(EXAMPLES / "policy.rego")
    table = RoutingTable.load(EXAMPLES / "routing.toml", ("cheap", "strong"))
    claims_only = LayeredPolicy()
    full = LayeredPolicy(PolicyState(engine, table))
    same = _inp("acme")
    doc = LayeredPolicy.document(same, claims_only.decide(same))

    naive = regopy.Interpreter()
    naive.add_module("policy.rego", source)
    naive.set_input(regopy.Input(doc))
    tenants = itertools.count()

    def uncached() -> None:
        engine._run({**doc, "tenant": f"t{next(tenants)}"})

    assert full.decide(same).allow
    rows = {
        "claims_only_us": _best_us(lambda: claims_only.decide(same), n, repeats),
        "query_recompiling_us": _best_us(
            lambda: naive.query("x = data." + ENTRYPOINT.replace("/", ".")),
            max(10, n // 20),
            repeats,
        ),
        "bundle_uncached_us": _best_us(uncached, n, repeats),
        "decide_cached_us": _best_us(lambda: full.decide(same), n, repeats),
    }
    goals = [
        Goal(
            "built bundle vs query() per call (speed-up)",
            rows["query_recompiling_us"] / rows["bundle_uncached_us"],
            GOAL_BUNDLE_SPEEDUP,
            "x",
        ),
        Goal(
            "cached decide() vs claims-only decide() (time ratio)",
            rows["decide_cached_us"] / rows["claims_only_us"],
            GOAL_CACHED_VS_CLAIMS,
            "x",
            "<=",
        ),
    ]
    return _report.result(
        "policy",
        machine=_harness.machine_info(regopy="regopy"),
        settings={"iterations": n, "repeats": repeats, "policy": "examples/policy/policy.rego"},
        results=rows,
        goals=goals,
        quick=quick,
    )


LABELS = {
    "claims_only_us": "claims only (no policy, no table) — floor",
    "query_recompiling_us": "regopy Interpreter.query() (recompiles per call) — naive",
    "bundle_uncached_us": "built bundle, new input each call (uncached)",
    "decide_cached_us": "decide() with policy + table, cache hit",
}


def render(result: dict[str, Any]) -> None:
    console = _report.report_console(highlight=False)
    m = result["machine"]
    console.print(
        f"atp bench policy — {m['cpu_model']}, {m['cpu_count']} cores, Python {m['python']}, "
        f"regopy {m['regopy']}, {result['date']}" + _report.quick_note(result),
        markup=False,
    )
    for key, label in LABELS.items():
        console.print(f"  {result['results'][key]:9.1f} µs  {label}", markup=False)
    _report.print_summary(console, _report.summary_lines(result))


def markdown(result: dict[str, Any]) -> str:
    rows = [(label, f"{result['results'][k]:.1f}") for k, label in LABELS.items()]
    return _report.markdown_table(("decision", "µs"), rows, result)


def run(args: argparse.Namespace) -> int:
    result = run_benchmark(quick=args.quick)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        render(result)
    return _report.exit_code(result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="policy decision benchmark")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    sys.exit(run(parser.parse_args()))
