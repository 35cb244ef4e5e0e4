"""The runs behind ``atp bench routing`` (see :mod:`.bench_routing` for what is measured):
replay adapter processes, router processes, the client that plays the evaluator, and the
in-process sweeps from the same learner code."""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from atp_proto import client as atp_client
from atp_proto.frames import QoS
from atp_proto.router.routing.learner import BanditLearner, Weights, store
from atp_proto.router.routing.learner.offline import train
from atp_proto.router.routing.learning import CandidateView, RouteQuery
from atp_proto.routing_data import (
    PriceModel,
    Record,
    adapter_name,
    adapter_names,
    price_model,
    read_records,
)
from atp_proto.testing import RouterProcess, serve_adapter

from ._routing_eval import (
    SILVER_K,
    Curve,
    baselines,
    curve_from_points,
    curve_from_scores,
    guarded_usd,
    outcome_of,
    pick_pair,
)

__all__ = ["DEFAULT_DATA", "Settings", "load_sources", "run_all"]

_ROOT = Path(__file__).resolve().parents[1]


def _checkouts() -> list[Path]:
    out = [_ROOT, Path.cwd()]
    dot_git = _ROOT / ".git"
    if dot_git.is_file():  # a git worktree: the main checkout too
        m = re.match(r"gitdir:\s*(.+)", dot_git.read_text())
        if m:
            gitdir = (_ROOT / m.group(1).strip()).resolve()
            if gitdir.parent.name == "worktrees":
                out.insert(1, gitdir.parent.parent.parent)
    return out


def _default_data() -> Path:
    paths = [c.parent / "shared" / "routing-data" / "public.jsonl" for c in _checkouts()]
    return next((p for p in paths if p.is_file()), paths[0])


DEFAULT_DATA = _default_data()
#: cost weights of the sweeps (reward = quality - w * cost / most expensive candidate)
SWEEP = (0.0, 0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0)
QUICK_SWEEP = (0.0, 0.1, 0.3, 1.0)
#: offline also tries heavier cost weights: with many models, the cheap ones are far
#: cheaper than the most expensive (whose cost normalises the penalty)
HEAVY = (1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 5.0)
ONLINE_WEIGHT = 0.1  #: the online router's cost weight (the default plan's)
QUICK_PROMPTS = 80  #: per source and mode in --quick


@dataclass(frozen=True)
class Settings:
    data: Path
    seed: int
    quick: bool
    train_share: float
    modes: tuple[str, ...]
    #: ``--score-scale``: given scales by source (routing_data.parse_score_scales)
    score_scales: Mapping[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Source:
    name: str
    records: list[Record]
    strong: str
    weak: str
    kind: str  #: "two-model" or "multi-model"


Progress = Callable[[str], None] | None


def _candidates(r: Record) -> list[str]:
    return sorted(r.models)


# ------------------------------------------------------------------ the learner in-process


def _query(r: Record, prices: dict[str, PriceModel], lane: QoS, i: int) -> RouteQuery:
    views = []
    for m in _candidates(r):
        in_tok = r.models[m].in_tokens
        out = round(prices[m].mean_out)
        tokens = in_tok + out + SILVER_K * float(np.sqrt(out))
        views.append(CandidateView(adapter_name(m), tokens, guarded_usd(prices[m], in_tok)))
    views.sort(key=lambda c: (c.est_usd_micros, c.est_tokens))  # the preflight's order
    return RouteQuery(f"sim-{i}", "bench", "default", r.task_type, lane, r.prompt, tuple(views))


def _renamed(records: Sequence[Record]) -> list[Record]:
    """Records with their models named as adapters (and learner arms) are."""
    return [
        Record(
            r.id,
            r.source,
            r.task_type,
            r.prompt,
            r.bucket,
            {adapter_name(m): o for m, o in r.models.items()},
        )
        for r in records
    ]


def _greedy(learner: BanditLearner, r: Record, prices: dict[str, PriceModel], w: float) -> str:
    """The learner's best guess (no sampling) at cost weight ``w``."""
    x = learner.vector(r.prompt, r.task_type)
    names = _candidates(r)
    cost = {m: guarded_usd(prices[m], r.models[m].in_tokens) for m in names}
    top = max(cost.values()) or 1.0
    pred = learner.predict(x, [adapter_name(m) for m in names], clip=False)
    return max(names, key=lambda m: pred[adapter_name(m)] - w * cost[m] / top)


def _simulate(
    order: Sequence[Record],
    prices: dict[str, PriceModel],
    w: float,
    seed: int,
    context_explore: float = 1.0,
    **opts: Any,
) -> list[str]:
    """The online bandit in-process: rank, take the first, report its recorded quality.
    ``opts``: more :class:`BanditLearner` settings (the levers' variants), and under
    ``learner`` the class to build instead of it."""
    make = opts.pop("learner", BanditLearner)  # a BanditLearner subclass (the levers')
    learner = make(
        weights={"default": Weights(1.0, w, 0.0)},
        seed=seed,
        context_explore=context_explore,
        **opts,
    )
    chosen = []
    for i, r in enumerate(order):
        q = _query(r, prices, QoS.SILVER, i)
        by_arm = {adapter_name(m): m for m in r.models}
        first = by_arm[learner.rank(q).order[0]]
        learner.observe(q, [], adapter_name(first))
        learner.feedback(q.decision_id, r.models[first].quality)
        chosen.append(first)
    return chosen


# ------------------------------------------------------------------ through the router


async def _route(
    url: str,
    http_port: int | None,
    records: Sequence[Record],
    *,
    feedback: bool,
    progress: Progress,
    label: str,
) -> tuple[list[str], list[float]]:
    """One stream per record, in order; the chosen model of each, and its latency (ms)."""
    chosen: list[str] = []
    latency: list[float] = []
    async with atp_client.connect(url) as client:
        for i, r in enumerate(records):
            names = {adapter_name(m): m for m in r.models}
            t0 = trio.current_time()
            final = await client.ask(
                r.prompt,
                task_type=r.task_type,
                qos="silver",
                meta={"adapters": sorted(names), "replay_id": r.id},
            )
            latency.append((trio.current_time() - t0) * 1000)
            model = names[final.content["adapter"]]
            chosen.append(model)
            if feedback and http_port is not None:
                await atp_client.feedback(
                    f"http://127.0.0.1:{http_port}",
                    str(final.telemetry["decision_id"]),
                    r.models[model].quality,
                    source="evaluator",
                )
            if progress and i % 25 == 0:
                progress(f"{label}: {i}/{len(records)}")
    return chosen, latency


def _router(ports: dict[str, int], state: Path, w: float, seed: int) -> RouterProcess:
    return RouterProcess(
        "--no-auth",
        "--learner",
        "bandit",
        "--routing-state",
        str(state),
        "--routing-weights",
        f"default=1,{w},0",
        "--routing-seed",
        str(seed),
        "--grace",
        "1",
        "--log-level",
        "info",
        adapters={n: f"grpc://127.0.0.1:{p}" for n, p in ports.items()},
        keep_lines=40,
        timeout=60,
    )


# ------------------------------------------------------------------ reports


def _row(records: Sequence[Record], chosen: Sequence[str], s: Source) -> dict[str, float]:
    o = outcome_of(records, chosen)
    qs = outcome_of(records, [s.strong] * len(records))["quality"]
    qw = outcome_of(records, [s.weak] * len(records))["quality"]
    o["share"] = sum(c == s.strong for c in chosen) / max(1, len(chosen))
    o["pgr"] = (o["quality"] - qw) / (qs - qw) if qs != qw else 0.0
    return o


def _table(
    records_all: Sequence[Record], chosen_all: Sequence[str], s: Source, seed: int
) -> dict[str, dict[str, float]]:
    """Ours beside the baselines, on the prompts where both strong and weak were recorded."""
    both = [
        (r, c)
        for r, c in zip(records_all, chosen_all, strict=True)
        if s.strong in r.models and s.weak in r.models
    ]
    records = [r for r, _ in both]
    chosen = [c for _, c in both]
    ours = _row(records, chosen, s)
    base = baselines(records, s.strong, s.weak, ours["share"], seed)
    qs, qw = base["always_strong"]["quality"], base["always_weak"]["quality"]
    table = {"ours (through the router)": ours}
    for name, measured in base.items():
        b = dict(measured)
        b.setdefault("share", {"always_strong": 1.0, "always_weak": 0.0}.get(name, float("nan")))
        b["pgr"] = (b["quality"] - qw) / (qs - qw) if qs != qw else 0.0
        table[name] = b
    return table


def _pair_records(records: Sequence[Record], s: Source) -> list[Record]:
    return [r for r in records if s.strong in r.models and s.weak in r.models]


def _choose_weight(
    train_recs: Sequence[Record],
    s: Source,
    prices: dict[str, PriceModel],
    seed: int,
    all_train: Sequence[Record],
    sweep: Sequence[float],
) -> tuple[float, dict[str, Any]]:
    """4-fold CV on the training part: the largest cost weight whose out-of-fold quality
    keeps 95 % of always-strong on the same prompts."""
    rng = random.Random(seed)
    ids = [r.id for r in train_recs]
    rng.shuffle(ids)
    fold = {rid: i % 4 for i, rid in enumerate(ids)}
    oof: dict[float, dict[str, str]] = {w: {} for w in sweep}
    for k in range(4):
        learner = BanditLearner()
        train(learner, _renamed([r for r in all_train if fold.get(r.id, -1) != k]))
        for r in train_recs:
            if fold[r.id] == k:
                for w in sweep:
                    oof[w][r.id] = _greedy(learner, r, prices, w)
    pair = _pair_records(train_recs, s)
    strong_q = outcome_of(pair, [s.strong] * len(pair))["quality"]
    best = min(sweep)
    table = {}
    for w in sorted(sweep):
        q = outcome_of(pair, [oof[w][r.id] for r in pair])["quality"]
        table[str(w)] = round(q / strong_q, 4) if strong_q else 0.0
        if strong_q and q >= 0.95 * strong_q:
            best = w
    return best, table


async def _with_adapters(
    data: Path, models: Sequence[str], tmp: Path, body: Callable[[dict[str, int]], Any]
) -> Any:
    async with contextlib.AsyncExitStack() as stack:
        ports: dict[str, int] = {}

        async def start(m: str) -> None:
            proc = await stack.enter_async_context(
                serve_adapter(
                    "atp_proto.adapters.replay:ReplayAdapter",
                    options={"data": str(data), "model": m},
                    name=adapter_name(m),
                    log=tmp / f"adapter-{adapter_name(m)}.log",
                    timeout=60,
                )
            )
            ports[adapter_name(m)] = proc.port

        for m in models:  # one after another: the exit stack is not task-safe
            await start(m)
        return await body(ports)


def load_sources(
    data: Path, scales: Mapping[str, tuple[float, float]] | None = None
) -> tuple[list[Source], dict[str, PriceModel], tuple[str, str] | None, list[Record]]:
    """The file's sources with their strong / weak pair, the price models and the pair
    chosen over the whole file (None: none common to every source); ``scales``: score
    scales given by the user (``--score-scale``), else derived per source."""
    records = read_records(data, scales)
    if not records:
        raise ValueError(f"{data}: no records")
    adapter_names(records)  # one adapter process and one arm per model
    by_source: dict[str, list[Record]] = {}
    for r in records:
        if r.models:  # a record no model was judged on has nothing to route between
            by_source.setdefault(r.source or "(none)", []).append(r)
    file_pair = pick_pair(by_source) if by_source else None
    sources: list[Source] = []
    for name, rs in sorted(by_source.items()):
        pair = file_pair or pick_pair(by_source, name)
        if pair is None:
            continue
        kind = "two-model" if all(len(r.models) <= 2 for r in rs) else "multi-model"
        sources.append(Source(name, rs, pair[0], pair[1], kind))
    if not sources:
        raise ValueError(
            f"{data}: no source has two models recorded on 90 % of its prompts (a strong "
            "and a weak one to route between)"
        )
    models = sorted({m for r in records for m in r.models})
    prices = {m: p for m in models if (p := price_model(records, m)) is not None}
    return sources, prices, file_pair, records


def run_all(settings: Settings, tmp: Path, progress: Progress) -> dict[str, Any]:
    sources, prices, file_pair, records = load_sources(settings.data, settings.score_scales)
    models = sorted({m for r in records for m in r.models})
    results: dict[str, Any] = {"pair": list(file_pair) if file_pair else None, "sources": {}}
    skipped = sorted({r.source or "(none)" for r in records} - {s.name for s in sources})
    if skipped:  # said, not silently left out
        why = "no two models recorded on 90 % of its prompts"
        results["skipped_sources"] = dict.fromkeys(skipped, why)

    async def body(ports: dict[str, int]) -> None:
        for s in sources:
            entry = results["sources"].setdefault(
                s.name, {"pair_kind": s.kind, "strong": s.strong, "weak": s.weak}
            )
            if "offline" in settings.modes:
                entry["offline"] = await _offline(
                    s, sources, prices, ports, settings, tmp, progress
                )
            if "online" in settings.modes:
                entry["online"] = await _online(s, prices, ports, settings, tmp, progress)

    trio.run(_with_adapters, settings.data, models, tmp, body)
    return results


def _split(s: Source, share: float) -> tuple[list[Record], list[Record]]:
    buckets = sorted(r.bucket for r in s.records)
    cut = buckets[min(len(buckets) - 1, int(len(buckets) * share))]
    return [r for r in s.records if r.bucket < cut], [r for r in s.records if r.bucket >= cut]


async def _offline(
    s: Source,
    sources: Sequence[Source],
    prices: dict[str, PriceModel],
    ports: dict[str, int],
    st: Settings,
    tmp: Path,
    progress: Progress,
) -> dict[str, Any]:
    sweep = (QUICK_SWEEP if st.quick else SWEEP) + HEAVY
    all_train = [r for src in sources for r in _split(src, st.train_share)[0]]
    train_recs, held = _split(s, st.train_share)
    if st.quick:
        held = held[:QUICK_PROMPTS]
    if progress:
        progress(f"{s.name}: offline: training and choosing the cost weight …")
    w, cv = _choose_weight(train_recs, s, prices, st.seed, all_train, sweep)
    learner = BanditLearner()
    train(learner, _renamed(all_train))
    state = tmp / f"offline-{adapter_name(s.name)}.sqlite"
    store.save(state, store.snapshot(learner))
    pair = _pair_records(held, s)
    out: dict[str, Any] = {"prompts": len(held), "where": "held out", "cost_weight": w}
    out["cv_quality_kept"] = cv
    # in-process sweep over the pair (RouteLLM's APGR), greedy on the trained state
    scores = []
    for r in pair:
        x = learner.vector(r.prompt, r.task_type)
        p = learner.predict(x, [adapter_name(s.strong), adapter_name(s.weak)], clip=False)
        cs = guarded_usd(prices[s.strong], r.models[s.strong].in_tokens)
        cw = guarded_usd(prices[s.weak], r.models[s.weak].in_tokens)
        gain = p[adapter_name(s.strong)] - p[adapter_name(s.weak)]
        scores.append(gain / max(1e-9, 1 - cw / cs) if cs > 0 else gain)
    if pair:
        curve = curve_from_scores(
            scores, [r.models[s.strong].raw for r in pair], [r.models[s.weak].raw for r in pair]
        )
        out["pair_curve"] = curve.to_json()
    # through the router at the chosen weight
    with _router(ports, state, w, st.seed) as router:
        chosen, lat = await _route(
            router.url, None, held, feedback=False, progress=progress, label=f"{s.name} offline"
        )
    out["table"] = _table(held, chosen, s, st.seed)
    greedy = [_greedy(learner, r, prices, w) for r in held]
    out["agreement_with_in_process"] = round(
        sum(a == b for a, b in zip(chosen, greedy, strict=True)) / max(1, len(held)), 4
    )
    out["latency_ms_p50"] = round(float(np.median(lat)), 2) if lat else None
    strong = out["table"]["always_strong"]
    ours = out["table"]["ours (through the router)"]
    out["cost_cut"] = round(1 - ours["usd"] / strong["usd"], 4) if strong["usd"] else None
    out["quality_kept"] = (
        round(ours["quality"] / strong["quality"], 4) if strong["quality"] else None
    )
    if s.kind == "multi-model":
        points = []
        for wi in sweep:
            ch = [_greedy(learner, r, prices, wi) for r in held]
            o = outcome_of(held, ch)
            points.append(
                {
                    "cost_weight": wi,
                    "quality_kept": round(o["quality"] / strong["quality"], 4),
                    "cost_cut": round(1 - o["usd"] / strong["usd"], 4),
                }
            )
        out["all_model_sweep_in_process"] = points
    out["notes"] = [
        f"cost weight {w} chosen by 4-fold CV on the training part (95 % of strong kept)",
        f"router choices = in-process greedy choices on {out['agreement_with_in_process']:.1%}"
        " (the rest: Thompson sampling's exploration)",
        "APGR / CPT: in-process sweep over the trained state's predictions on held-out prompts",
    ]
    if len(pair) < FEW_PROMPTS:
        out["notes"].append(_few(len(pair), "held-out"))
    return out


#: below this many prompts on the pair a source's curves are noise (one prompt moves
#: PGR by more than 0.05): said beside its figures
FEW_PROMPTS = 20


def _few(n: int, what: str) -> str:
    return f"only {n} {what} prompts with both models of the pair: these figures are noise"


async def _online(
    s: Source,
    prices: dict[str, PriceModel],
    ports: dict[str, int],
    st: Settings,
    tmp: Path,
    progress: Progress,
) -> dict[str, Any]:
    order = list(s.records)
    random.Random(st.seed).shuffle(order)
    if st.quick:
        order = order[:QUICK_PROMPTS]
    half = len(order) // 2
    state = tmp / f"online-{adapter_name(s.name)}.sqlite"
    with _router(ports, state, ONLINE_WEIGHT, st.seed) as router:
        chosen, lat = await _route(
            router.url,
            router.metrics_port,
            order,
            feedback=True,
            progress=progress,
            label=f"{s.name} online",
        )
    out: dict[str, Any] = {"prompts": len(order), "where": f"seed {st.seed}, whole run"}
    out["table"] = _table(order, chosen, s, st.seed)
    out["second_half_table"] = _table(order[half:], chosen[half:], s, st.seed)
    out["latency_ms_p50"] = round(float(np.median(lat)), 2) if lat else None
    sim0 = _simulate(order, prices, ONLINE_WEIGHT, st.seed)
    out["agreement_with_in_process"] = round(
        sum(a == b for a, b in zip(chosen, sim0, strict=True)) / max(1, len(order)), 4
    )
    whole: list[tuple[float, float]] = []
    second: list[tuple[float, float]] = []
    sweep = QUICK_SWEEP if st.quick else SWEEP
    for w in sweep:
        if progress:
            progress(f"{s.name}: online sweep, cost weight {w} …")
        ch = sim0 if w == ONLINE_WEIGHT else _simulate(order, prices, w, st.seed)
        for part, recs, got in ((whole, order, ch), (second, order[half:], ch[half:])):
            pr = _pair_records(recs, s)
            ids = {r.id for r in pr}
            keep = [c for r, c in zip(recs, got, strict=True) if r.id in ids]
            row = _row(pr, keep, s)
            part.append((row["share"], row["pgr"]))
    out["whole_curve"] = curve_from_points(whole).to_json()
    out["second_half_curve"] = curve_from_points(second).to_json()
    out["notes"] = [
        f"quality / cost / share: through the router, cost weight {ONLINE_WEIGHT}, feedback "
        "on every answer (bandit feedback only)",
        f"router choices = in-process replay choices on {out['agreement_with_in_process']:.1%}",
        "APGR curves: the bandit replayed in-process per cost weight, same order and seed",
    ]
    if len(_pair_records(order, s)) < FEW_PROMPTS:
        out["notes"].append(_few(len(_pair_records(order, s)), "routed"))
    return out


__all__ += ["Curve"]
