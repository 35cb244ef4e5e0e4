"""Routing benchmark: the learned router on real per-prompt outcomes of real models
(``../shared/routing-data/public.jsonl`` by default; any file in that format with
``--data``), judged the way RouteLLM judges routers.

The path is the real one: ``atp serve --learner bandit`` as a process, one replay adapter
process per model (:mod:`atp_proto.adapters.replay`: it streams an answer of the recorded
length and reports the recorded tokens and cost, never correctness), a client session
opening one stream per prompt (``meta.adapters``: the models recorded for the prompt), and
the benchmark as the evaluator: it reads the FINAL's adapter and ``decision_id`` and, in
online mode, POSTs the recorded quality of that answer to ``/v1/feedback``.

Two modes, per source of the file:

* offline: split by ``bucket`` (the lowest buckets holding ``--train-share`` of the
  source's records train, the rest is held out); ``atp routing train``'s code trains one
  state on the training part of every source; the router loads it and routes the
  held-out prompts (no feedback). The operating point (cost weight) is chosen per source
  by 4-fold cross-validation on the training part: the cheapest whose out-of-fold
  quality keeps 95 % of always-strong.
* online: the router starts knowing nothing and routes the source's prompts in a
  ``--seed``ed order with feedback (bandit feedback: it never learns the outcome of a
  model it did not call); reported over the whole run and its second half.

Where the figures come from: quality / cost / strong share at the operating point are
measured through the router. The APGR sweeps over the cost weight are computed in-process
from the same learner code (offline: the trained state's predictions on the held-out
prompts, greedy; online: the bandit replayed in-process once per cost weight with the
same seed and order), because replaying every sweep point through the router would
multiply the run time; the agreement between the router's choices and the in-process
choices at the operating point is reported to show they are the same learner.

    atp bench routing [--data FILE.jsonl] [--json] [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from atp_proto.routing_data import DataError

from . import _report
from ._report import Goal

# Only light modules at import time: `atp` builds its parser (and so imports this module for
# add_options) on every command, `atp serve` and `atp adapter serve` included. The routing
# machinery (numpy, trio, the learner, atp_proto.testing) is imported when the benchmark runs.

#: RouteLLM's best published routers on the same data (arXiv 2406.18665; README)
PUBLISHED: dict[str, dict[str, float]] = {
    "routellm-gsm8k": {"apgr": 0.622, "cpt50": 0.336},
    "routellm-mtbench": {"apgr": 0.802, "cpt50": 0.134, "cpt80": 0.313},
}
GOAL_ONLINE_APGR = 0.62  #: second half, bandit feedback only
GOAL_COST_CUT = 0.50  #: multi-model sources: at >= 95 % of always-strong quality
AIM_OFFLINE_APGR = 0.70  #: reported beside each source (the issue's aim, not a floor)


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        metavar="FILE.jsonl",
        help="outcome records in the routing-data format (default: "
        "../shared/routing-data/public.jsonl beside the checkout)",
    )
    p.add_argument("--seed", type=int, default=1, metavar="N", help="order and sampling seed")
    p.add_argument(
        "--score-scale",
        action="append",
        default=[],
        metavar="[SOURCE=]LO:HI",
        help="the scale of the 'score' values (of every source, or of SOURCE; repeatable); "
        "by default derived per source from its scores (a 1..10 judge that never gave "
        "more than 5 reads as 1..5)",
    )
    p.add_argument(
        "--train-share", type=float, default=0.6, metavar="F", help="offline split (default 0.6)"
    )
    p.add_argument(
        "--mode", choices=["both", "online", "offline"], default="both", help="default both"
    )
    p.add_argument(
        "--levers",
        action="store_true",
        help="also judge the levers tried against the missed goals (pretrained embeddings "
        "if installed, prompt-dependent exploration, many-model choice rules) on the "
        "rotated splits and seeds, in-process (several minutes more; not with --quick)",
    )


def check_options(args: argparse.Namespace) -> str | None:
    """Why the options given would not all act (``atp bench`` says it, exit 2)."""
    if args.levers and args.quick:
        return "--levers does not run with --quick (several minutes of in-process runs)"
    return None


def goals_of(results: dict[str, Any]) -> list[Goal]:
    goals: list[Goal] = []
    for src, r in results["sources"].items():
        off = r.get("offline")
        on = r.get("online")
        pub = PUBLISHED.get(src)
        if off and off.get("pair_curve") and pub:
            goals.append(
                Goal(
                    f"{src}: offline APGR on held-out prompts above RouteLLM's best",
                    off["pair_curve"]["apgr"],
                    pub["apgr"],
                    "",
                    ">=",
                )
            )
        if on and on.get("second_half_curve") and r.get("pair_kind") == "two-model":
            goals.append(
                Goal(
                    f"{src}: online APGR over the second half (bandit feedback)",
                    on["second_half_curve"]["apgr"],
                    GOAL_ONLINE_APGR,
                    "",
                )
            )
        if off and r.get("pair_kind") == "multi-model" and off.get("cost_cut") is not None:
            goals.append(
                Goal(
                    f"{src}: cost cut at the CV operating point (all models)",
                    off["cost_cut"],
                    GOAL_COST_CUT,
                    "",
                )
            )
            goals.append(
                Goal(
                    f"{src}: quality kept there, share of always-strong",
                    off["quality_kept"],
                    0.95,
                    "",
                )
            )
    return goals


def run(args: argparse.Namespace) -> int:
    from atp_proto.cli import UsageError

    from . import _harness
    from ._routing_run import DEFAULT_DATA, Settings, run_all
    from ._routing_spread import add_spreads

    data = Path(args.data) if args.data else DEFAULT_DATA
    if not data.is_file():
        if args.data:
            raise UsageError(f"cannot read --data {data}: no such file")
        # the outcome records are public data sets, not part of the repository
        raise UsageError(
            f"no outcome records at {data} (the default, beside the checkout; they are not "
            "in the repository): pass --data FILE.jsonl (README, 'Learned routing')"
        )
    if not 0.1 <= args.train_share <= 0.9:
        raise UsageError("--train-share must be within 0.1..0.9")
    from atp_proto.routing_data import parse_score_scales

    try:
        scales = parse_score_scales(args.score_scale)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = Settings(
        data=data,
        seed=args.seed,
        quick=args.quick,
        train_share=args.train_share,
        modes=("online", "offline") if args.mode == "both" else (args.mode,),
        score_scales=scales,
    )
    status = None
    progress = None
    if sys.stderr.isatty() and not args.json:
        from rich.console import Console

        status = Console(stderr=True).status("routing benchmark …")
        status.start()
        progress = status.update
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="atp-bench-routing-") as tmp:
            results = run_all(settings, Path(tmp), progress)
        if progress:
            progress("spread over splits and seeds (in-process) …")
        add_spreads(results, settings)
        if getattr(args, "levers", False) and not args.quick:
            from ._routing_levers import run_levers
            from ._routing_run import load_sources

            sources, prices, _, _ = load_sources(data, scales)
            results["levers"] = run_levers(sources, prices, args.train_share, args.seed, progress)
    except DataError as exc:  # the records given are malformed: bad input (exit 2)
        if status is not None:
            status.stop()
        print(f"atp bench routing: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        if status is not None:
            status.stop()
        print(f"atp bench routing: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if status is not None:
            status.stop()
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["published_routellm"] = PUBLISHED
    out = _report.result(
        "routing",
        machine=_harness.machine_info(),
        settings={
            "data": str(data),
            "seed": args.seed,
            "train_share": args.train_share,
            "mode": args.mode,
            "score_scale": args.score_scale,
        },
        results=results,
        goals=goals_of(results),
        quick=args.quick,
    )
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        render(out)
    return _report.exit_code(out)


def _f(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else f"{v:{spec}}"


def render(out: dict[str, Any]) -> None:
    from rich.table import Table

    console = _report.report_console()
    res = out["results"]
    console.print(
        f"[bold]atp bench routing[/bold] {out['settings']['data']} seed {out['settings']['seed']}"
        f"{_report.quick_note(out)} — {res['elapsed_s']} s, pair {res['pair']}"
    )
    for src, r in res["sources"].items():
        for mode in ("offline", "online"):
            m = r.get(mode)
            if not m:
                continue
            t = Table(title=f"{src} — {mode} ({m['prompts']} prompts {m['where']})")
            for col in ("router", "quality", "cost $", "strong share", "PGR"):
                t.add_column(col, justify="left" if col == "router" else "right")
            for name, row in m["table"].items():
                t.add_row(
                    name,
                    _f(row.get("quality")),
                    _f(row.get("usd"), ".4f"),
                    _f(row.get("share"), ".1%"),
                    _f(row.get("pgr")),
                )
            console.print(t)
            for key in ("pair_curve", "second_half_curve", "whole_curve"):
                c = m.get(key)
                if c:
                    pub = PUBLISHED.get(src, {}) if key == "pair_curve" else {}
                    console.print(
                        f"  {key}: APGR {c['apgr']:.3f} (RouteLLM-10 {c['apgr_routellm10']:.3f}), "
                        f"CPT(50%) {_f(c['cpt50'], '.1%')}, CPT(80%) {_f(c['cpt80'], '.1%')}"
                        + (
                            f"; RouteLLM best APGR {pub['apgr']}"
                            if pub and key == "pair_curve"
                            else ""
                        )
                        + (f"; aim {AIM_OFFLINE_APGR}" if key == "pair_curve" else "")
                    )
            d = m.get("decision_us")
            if d:
                console.print(
                    f"  decision (rank, in-process): p50 {d['p50']} µs, p99 {d['p99']} µs "
                    f"over {d['candidates']:.1f} candidates"
                )
            for note in m.get("notes", []):
                console.print(f"  {note}")
    if "levers" in res:
        render_levers(console, res["levers"])
    _report.print_summary(console, _report.summary_lines(out))


def _st(st: dict[str, Any] | None) -> str:
    if not st or st.get("mean") is None:
        return "-"
    d = st.get("paired_delta")
    paired = f" (Δ {d['mean']:+.3f} ± {d['std']:.3f})" if d and d.get("mean") is not None else ""
    return f"{st['mean']:.3f} ± {st['std']:.3f}{paired}"


def render_levers(console: Any, lev: dict[str, Any]) -> None:
    """The levers' figures: mean ± sd over the rotated splits / seeds, default first."""
    from rich.table import Table

    emb = lev["embedders"]
    console.print(
        f"[bold]levers[/bold]: embedders ran {emb['ran'] or 'none'}"
        + "".join(f"; {n} skipped ({why})" for n, why in emb["skipped"].items())
        + "".join(f"; {n} {ms} ms per prompt" for n, ms in emb["ms_per_prompt"].items())
    )
    off = lev["offline_apgr_rotations"]
    names = sorted({src for per in off.values() for src in per})
    t = Table(title="offline pair APGR, 5 rotated splits: mean ± sd (Δ: paired, vs default)")
    t.add_column("features")
    for n in names:
        t.add_column(n, justify="right")
    for feat, per in off.items():
        t.add_row(feat, *(_st(per.get(n)) for n in names))
    console.print(t)
    for src, per in lev["online_second_half_apgr_seeds"].items():
        console.print(
            f"  {src} online second half, 5 seeds, by context_explore: "
            + ", ".join(f"{b}: {_st(st)}" for b, st in per.items())
        )
    for src, per in lev.get("online_exploration_variants", {}).items():
        console.print(
            f"  {src} online second half, 5 seeds, exploration variants: "
            + ", ".join(f"{name}: {_st(st)}" for name, st in per.items())
        )
    for src, per in lev["multi_model_cost_cut_at_95"].items():
        console.print(
            f"  {src} cost cut at 95 % of strong on the held-out frontier: "
            + ", ".join(f"{rule}: {_st(st)}" for rule, st in per.items())
        )
