"""Fork the load workers, follow their progress, sample the router, merge the results.

:func:`run` starts one process per :class:`~.worker.Plan` (fork: nothing re-imported),
waits until every one is connected, gives them the same second 0, and while they run
sums their last ticks for the caller's progress display and samples the router's process
tree (:class:`~.fleet.Sampler`). The result merges the workers' histograms exactly (HDR
buckets) and derives the rates over the recorded window (``duration - warmup``).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import hist
from .fleet import Sampler
from .worker import COUNTERS, Plan
from .worker import run as worker_run

Progress = Callable[[dict[str, dict[str, int]], float], None]


def _sum_ticks(ticks: Sequence[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for t in ticks:
        for lane, counters in t.items():
            into = out.setdefault(lane, dict.fromkeys(COUNTERS, 0))
            for k, v in counters.items():
                into[k] += v
    return out


def run(
    plans: Sequence[Plan],
    *,
    router_pid: int | None = None,
    adapter_pids: list[int] | None = None,
    progress: Progress | None = None,
    connect_timeout: float = 60.0,
) -> dict[str, Any]:
    """Run ``plans`` (one process each) to the end; the merged result (see module doc)."""
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for plan in plans:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker_run, args=(plan, child), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)
    duration = max(p.duration for p in plans)
    limit = duration + max(p.drain for p in plans) + 30
    results: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + connect_timeout
        for pipe in pipes:
            if not pipe.poll(max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"a load worker did not connect within {connect_timeout:g} s")
            kind, payload = pipe.recv()
            if kind == "error":
                raise RuntimeError(f"load worker: {payload}")
        sampler = Sampler(router_pid).start() if router_pid else None
        adapters = Sampler(adapter_pids).start() if adapter_pids else None
        start_at = time.time() + 0.2
        for pipe in pipes:
            pipe.send(start_at)
        ticks: list[dict[str, dict[str, int]]] = [{} for _ in pipes]
        pending = set(range(len(pipes)))
        by_index: dict[int, dict[str, Any]] = {}
        end = time.monotonic() + limit
        while pending:
            if time.monotonic() > end:
                raise RuntimeError(f"the load workers did not finish within {limit:g} s")
            ready = mp.connection.wait([pipes[i] for i in pending], timeout=0.25)
            for conn in ready:
                i = pipes.index(conn)  # type: ignore[arg-type]
                pipe_: Any = conn
                kind, payload = pipe_.recv()
                if kind == "tick":
                    ticks[i] = payload
                elif kind == "done":
                    by_index[i] = payload
                    pending.discard(i)
                else:
                    raise RuntimeError(f"load worker: {payload}")
            if progress is not None:
                progress(_sum_ticks(ticks), max(0.0, time.time() - start_at))
        router = sampler.stop() if sampler else None
        adapter_use = adapters.stop() if adapters else None
        results = [by_index[i] for i in range(len(pipes))]
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(2)
    merged = merge(results, plans, router)
    if adapter_use is not None:
        adapter_use.pop("timeline")
    merged["adapters"] = adapter_use
    return merged


def merge(
    results: Sequence[dict[str, Any]], plans: Sequence[Plan], router: dict[str, Any] | None
) -> dict[str, Any]:
    duration = max(p.duration for p in plans)
    window = duration - max(p.warmup for p in plans)
    lanes: dict[str, dict[str, Any]] = {}
    hists: dict[str, dict[str, Any]] = {}
    timelines: dict[str, dict[int, Any]] = {}
    for r in results:
        for name, lane in r["lanes"].items():
            into = lanes.setdefault(
                name, {**dict.fromkeys(COUNTERS, 0), "unfinished": 0, "errors": {}}
            )
            for k, v in lane["counters"].items():
                into[k] += v
            into["unfinished"] += lane["unfinished"]
            for code, n in lane["errors"].items():
                into["errors"][code] = into["errors"].get(code, 0) + n
            h = hists.setdefault(name, {"ttfp": hist.new(), "ttf": hist.new()})
            hist.merge_into(h["ttfp"], lane["ttfp"])
            hist.merge_into(h["ttf"], lane["ttf"])
            tl = timelines.setdefault(name, {})
            for sec, enc in lane["timeline"].items():
                hist.merge_into(tl.setdefault(sec, hist.new()), enc)
    total: dict[str, Any] = {**dict.fromkeys(COUNTERS, 0), "unfinished": 0, "errors": {}}
    all_ttfp, all_ttf = hist.new(), hist.new()
    for name in sorted(lanes):
        lane = lanes[name]
        for k in (*COUNTERS, "unfinished"):
            total[k] += lane[k]
        for code, n in lane["errors"].items():
            total["errors"][code] = total["errors"].get(code, 0) + n
        lane["shed"] = lane["errors"].get("EPREEMPT", 0)
        lane["shed_rate"] = lane["shed"] / lane["attempts"] if lane["attempts"] else 0.0
        lane["ttfp_ms"] = hist.summary_ms(hists[name]["ttfp"])
        lane["ttf_ms"] = hist.summary_ms(hists[name]["ttf"])
        lane["ttfp_cdf"] = hist.cdf_ms(hists[name]["ttfp"])
        lane["streams_per_s"] = lane["completed"] / window
        all_ttfp.add(hists[name]["ttfp"])
        all_ttf.add(hists[name]["ttf"])
    total["shed"] = total["errors"].get("EPREEMPT", 0)
    total["shed_rate"] = total["shed"] / total["attempts"] if total["attempts"] else 0.0
    total["ttfp_ms"] = hist.summary_ms(all_ttfp)
    total["ttf_ms"] = hist.summary_ms(all_ttf)
    seconds = sorted({s for tl in timelines.values() for s in tl})
    timeline = []
    for sec in seconds:
        row: dict[str, Any] = {"t": sec}
        for name, tl in sorted(timelines.items()):
            if sec in tl:
                s = hist.summary_ms(tl[sec])
                row[name] = {"n": s["n"], "p50": s["p50"], "p99": s["p99"]}
        timeline.append(row)
    wall = max(r["wall_s"] for r in results)
    return {
        "workers": len(results),
        "duration_s": duration,
        "window_s": window,
        "streams_per_s": total["completed"] / window,
        "frames_per_s": (total["partials"] + total["finals"]) / window,
        "total": total,
        "lanes": lanes,
        "timeline": timeline,
        "router": router,
        "client_cpu_pct": 100 * sum(r["cpu_s"] for r in results) / wall if wall else 0.0,
    }
