"""The scenarios of ``atp bench e2e`` (issue 14 items 1-4): each starts the adapter and router
processes it needs, runs the load (:mod:`.drive`) and returns ``(section, goals)``.

Every comparison is measured in the same run, on the same adapter processes: the router
against the adapters called directly (overhead), gold under a bronze flood against gold
alone (QoS), probes beside slow readers against probes alone (slow readers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .._report import Goal
from . import drive, fleet
from .holders import Holder
from .worker import Flow, Plan

Say = Callable[[str], None]

GOAL_ADDED_P50_MS = 0.3
GOAL_ADDED_P99_MS = 2.0
GOAL_QOS_RATIO = 1.2
GOAL_CAPACITY_P99_MS = 100.0
GOAL_RATE = 1000.0  #: streams/s the overhead goals are stated at (issue 14 item 2)
MIB = 1 << 20


@dataclass(frozen=True)
class Options:
    quick: bool
    transport: str = "ws"
    rate: float = 1000.0
    concurrency: int = 0
    duration: float = 10.0
    warmup: float = 1.0
    prompt_bytes: int = 64
    chunks: int = 4
    chunk_delay_ms: float = 0.0
    adapters: int = 2
    procs: int = 2
    sessions: int = 4
    lanes: tuple[tuple[str, float], ...] = (("gold", 1.0), ("silver", 1.0), ("bronze", 1.0))
    workers: int = 1
    slow_readers: int = 1000
    open_streams: int = 10_000
    sweep: tuple[float, ...] = (50, 100, 200, 400, 600, 800, 1000, 1200, 1600, 2000)
    #: the persona adapters' Estimate max_age_ms (ATP-BUDGET-018): the router reuses an
    #: estimate that long for streams of the same class; 0: an Estimate call per stream
    estimate_max_age_ms: int = 1000


def _settle(o: Options) -> float:
    """Seconds to let the router settle before reading its RSS."""
    return 1.0 if o.quick else 2.0


def _persona(o: Options, **extra: str) -> dict[str, str]:
    return {
        "latency_ms": f"{o.chunk_delay_ms:g}",
        "chunks": str(o.chunks),
        "max_age_ms": str(o.estimate_max_age_ms),
        **extra,
    }


def _plans(o: Options, target: str, r: fleet.Router | None, urls: dict[str, str]) -> list[Plan]:
    """The load of ``o`` split over ``o.procs`` workers."""
    total_w = sum(w for _, w in o.lanes)
    base = Plan(
        target,
        o.duration,
        url=r.url if r else "",
        ca_file=r.ca_file if r else None,
        adapters=dict(urls),
        warmup=o.warmup,
        prompt_bytes=o.prompt_bytes,
        sessions=o.sessions,
    )
    plans = []
    n_flows = o.procs * len(o.lanes)
    for k in range(o.procs):
        if o.concurrency:
            share = o.concurrency // o.procs + (1 if k < o.concurrency % o.procs else 0)
            lanes = tuple(name for name, _ in o.lanes)
            plans.append(replace(base, concurrency=share, lanes=lanes, seed=k))
        else:
            # Each of the n_flows flows (lane x process) starts a fraction m / n_flows of
            # its own period late, so that the streams of all of them arrive spread over
            # time (evenly when the lanes' weights are equal: 1 / rate apart), not every
            # lane and process at the same instant (with 3 lanes x 2 processes, six SYNs
            # due together every 6 ms at 1,000 streams/s: a burst the router serialises
            # and the direct baseline, over two adapter processes, mostly does not).
            flows = []
            for j, (name, w) in enumerate(o.lanes):
                rate = o.rate * w / total_w / o.procs
                phase = (k * len(o.lanes) + j) / n_flows / rate if rate > 0 else 0.0
                flows.append(Flow(name, rate, start=phase))
            plans.append(replace(base, flows=tuple(flows), seed=k))
    return plans


def _progress(say: Say, what: str) -> drive.Progress:
    def show(lanes: dict[str, dict[str, int]], t: float) -> None:
        done = sum(c["completed"] for c in lanes.values())
        bad = sum(c["failed"] + c["retries"] for c in lanes.values())
        say(f"{what}: {t:5.1f} s, {done:,} streams done, {bad:,} errors / retries")

    return show


def _added(router: dict[str, Any], direct: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Router minus direct, per percentile, of TTFP and time to FINAL (ms)."""
    out = {}
    for key in ("ttfp_ms", "ttf_ms"):
        a, b = router["total"][key], direct["total"][key]
        out[key] = {p: a[p] - b[p] for p in ("p50", "p95", "p99", "max")}
    return out


# ---------------------------------------------------------------------- load + overhead


def load(o: Options, say: Say) -> tuple[dict[str, Any], list[Goal]]:
    """Items 1 and 2: the load through the router, then the same load straight to the same
    adapter processes over gRPC; the router's added latency per percentile."""
    with fleet.adapters(o.adapters, _persona(o)) as ad:
        with fleet.router(ad.urls, transport=o.transport, workers=o.workers, metrics=True) as r:
            say("load: through the router")
            through = drive.run(
                _plans(o, "router", r, ad.urls),
                router_pid=r.proc.pid,
                adapter_pids=ad.pids,
                progress=_progress(say, "load → router"),
            )
            # measured, not assumed: how many preflights the router answered from a
            # reused estimate (with --workers N: the worker that answers the scrape)
            estimates = fleet.estimate_reuse(r.proc.metrics_port)
        say("load: straight to the adapters (gRPC)")
        direct = drive.run(
            _plans(o, "direct", None, ad.urls),
            adapter_pids=ad.pids,
            progress=_progress(say, "direct"),
        )
    added = _added(through, direct)
    rate = through["streams_per_s"]
    at = f"at {rate:,.0f} streams/s"
    goals = [
        Goal(f"router added TTFP p50 {at}", added["ttfp_ms"]["p50"], GOAL_ADDED_P50_MS, "ms", "<="),
        Goal(f"router added TTFP p99 {at}", added["ttfp_ms"]["p99"], GOAL_ADDED_P99_MS, "ms", "<="),
    ]
    if not o.concurrency:
        goals.append(Goal("sustained streams/s through the router", rate, GOAL_RATE, "streams/s"))
    section = {
        "offered_rate": None if o.concurrency else o.rate,
        "concurrency": o.concurrency or None,
        "router": through,
        "direct": direct,
        "added": added,
        "estimate_max_age_ms": o.estimate_max_age_ms,
        "estimates": estimates,
        "router_cpu_ms_per_stream": _cpu_per_stream(through),
    }
    return section, goals


def _cpu_per_stream(run: dict[str, Any]) -> float | None:
    """The router's CPU milliseconds per stream: its CPU seconds over the whole run (from
    the moment the load processes start, warm-up included) over the streams of the whole
    run, estimated as the recorded rate times the duration. Unlike the latencies it
    barely moves with a shared host's load, so runs on different hosts compare."""
    router = run.get("router")
    streams = run["streams_per_s"] * run["duration_s"]
    if not router or streams <= 0:
        return None
    return float(1000.0 * router["cpu_s"] / streams)


# ---------------------------------------------------------------------- QoS isolation


def qos(o: Options, say: Say) -> tuple[dict[str, Any], list[Goal]]:
    """Item 3: gold alone, then gold beside bronze at 5x capacity, then bronze at half its
    share of the capacity honouring retry_after_ms (recovery). The capacity is fixed:
    admission at ``limit`` streams at once (AIMD pinned), each stream ~``chunks x delay``
    long, half of the slots kept from bronze (``bronze_limit_share``, ATP-ADAPT-026)."""
    limit, delay_ms, chunks = 4, 20.0, 4
    capacity = limit / (chunks * delay_ms / 1000)  # streams/s the admission lets through
    share = 0.5  # of the slots bronze may take (ATP-ADAPT-026); the rest is gold's headroom
    gold_rate, flood, recovery = 0.2 * capacity, 5 * capacity, 0.5 * capacity * share
    # half the slots are headroom bronze cannot take (ATP-ADAPT-026): gold (a fifth of
    # the capacity) never waits behind bronze for a slot
    admission = {
        "initial_limit": limit,
        "min_limit": limit,
        "max_limit": limit,
        "max_queue": 32,
        "bronze_limit_share": share,
    }
    d = o.duration
    opts = {"latency_ms": f"{delay_ms:g}", "chunks": str(chunks)}
    runs: dict[str, dict[str, Any]] = {}
    # gold and bronze are different clients: gold in one load process, bronze in the
    # others; the flood does not retry (it is 5x capacity as offered), the recovery
    # honours retry_after_ms
    n_bronze = max(1, o.procs - 1)
    with fleet.adapters(o.adapters, opts, prefix="q") as ad:
        with fleet.router(ad.urls, transport=o.transport, admission=admission) as r:
            base = Plan(
                "router", d, url=r.url, ca_file=r.ca_file, adapters=ad.urls, warmup=o.warmup
            )
            gold = replace(base, flows=(Flow("gold", gold_rate),), sessions=1)
            phases = {
                "gold_alone": [gold],
                "gold_beside_flood": [gold]
                + [
                    replace(base, flows=(Flow("bronze", flood / n_bronze, honour_retry=False),))
                    for _ in range(n_bronze)
                ],
                "bronze_recovery": [
                    replace(base, flows=(Flow("bronze", recovery / n_bronze),))
                    for _ in range(n_bronze)
                ],
            }
            for name, plans in phases.items():
                say(f"qos: {name.replace('_', ' ')}")
                runs[name] = drive.run(
                    plans, router_pid=r.proc.pid, progress=_progress(say, f"qos {name}")
                )
    alone = runs["gold_alone"]["lanes"]["gold"]
    beside = runs["gold_beside_flood"]["lanes"]["gold"]
    bronze = runs["gold_beside_flood"]["lanes"]["bronze"]
    rec = runs["bronze_recovery"]["lanes"]["bronze"]
    ratio = beside["ttfp_ms"]["p99"] / alone["ttfp_ms"]["p99"] if alone["ttfp_ms"]["p99"] else 0.0
    hinted = 1 - bronze["shed_no_hint"] / bronze["shed"] if bronze["shed"] else 0.0
    recovered = rec["completed"] / rec["requests"] if rec["requests"] else 0.0
    amplification = rec["attempts"] / rec["requests"] if rec["requests"] else 0.0
    goals = [
        Goal(
            "gold TTFP p99 under a 5× bronze flood / gold alone", ratio, GOAL_QOS_RATIO, "x", "<="
        ),
        Goal("gold streams shed under the flood", beside["shed"], 0, "streams", "<="),
        Goal(
            "bronze sheds under the flood (share of bronze attempts)",
            bronze["shed_rate"],
            0.5,
            "share",
        ),
        Goal("bronze sheds carrying retry_after_ms", hinted, 1.0, "share"),
        Goal("bronze recovery: requests completed", recovered, 0.99, "share"),
        Goal(
            "bronze recovery: attempts per request (no retry storm)", amplification, 1.05, "x", "<="
        ),
    ]
    section = {
        "capacity_streams_per_s": capacity,
        "admission": admission,
        "adapter": opts,
        "gold_rate": gold_rate,
        "bronze_flood_rate": flood,
        "bronze_recovery_rate": recovery,
        "gold_p99_ratio": ratio,
        "runs": runs,
    }
    return section, goals


# ---------------------------------------------------------------------- slow readers


def slow_readers(o: Options, say: Say) -> tuple[dict[str, Any], list[Goal]]:
    """Item 3: ``n`` clients that stop reading (each a session with one 32 KiB answer and
    a 4 KiB credit window); router RSS against a bound from the code's buffers, and gold
    probes beside them against the same probes alone."""
    n, prompt, window, chunks = o.slow_readers, 32 << 10, 4 << 10, 16
    h2_window = 65535  #: the router's gRPC client: per-call receive window
    # What one stuck reader may cost the router, from the code's buffers: its session
    # (~40 KiB idle, atp bench ws), its prompt held four times (the SYN message, the
    # payload, the decoded text, the gRPC request), the answer the router may hold for it
    # (the echo's whole answer is the prompt, below the session's OUTPUT_HIGH_WATER of
    # 256 KiB, beyond which the stream task stops), and the gRPC call's receive window.
    per_reader = 40 * 1024 + 4 * prompt + prompt + h2_window
    probe_rate = 20.0
    admission = {"initial_limit": n + 256, "max_limit": n + 256, "max_queue": 1024}
    with (
        fleet.adapters(1, _persona(o), prefix="p") as probes,
        fleet.adapters(1, {"chunks": str(chunks)}, target="echo", prefix="big") as big,
    ):
        urls = {**probes.urls, **big.urls}
        with fleet.router(urls, transport="ws", admission=admission) as r:
            base = Plan(
                "router",
                o.duration,
                url=r.url,
                adapters=probes.urls,
                warmup=o.warmup,
                flows=(Flow("gold", probe_rate),),
                sessions=1,
            )
            say("slow readers: probes alone")
            alone = drive.run([base], router_pid=r.proc.pid, progress=_progress(say, "probes"))
            time.sleep(_settle(o) / 4)
            rss0 = fleet.rss(fleet.tree(r.proc.pid))
            say(f"slow readers: opening {n:,} clients that stop reading")
            with Holder("slow-readers", r.url, n, prompt, window, "big1") as h:
                time.sleep(_settle(o))
                rss1 = fleet.rss(fleet.tree(r.proc.pid))
                say("slow readers: probes beside them")
                beside = drive.run(
                    [base], router_pid=r.proc.pid, progress=_progress(say, "probes beside")
                )
                rss2 = fleet.rss(fleet.tree(r.proc.pid))
                info = h.info
    grown = max(rss1, rss2, beside["router"]["rss_peak_bytes"]) - rss0
    bound = n * per_reader
    a, b = alone["lanes"]["gold"]["ttfp_ms"], beside["lanes"]["gold"]["ttfp_ms"]
    ratio = b["p50"] / a["p50"] if a["p50"] else 0.0
    goals = [
        Goal(f"slow readers held open (of {n:,})", info["held"], n, "clients"),
        Goal(
            f"router RSS growth with {n:,} slow readers (bound {bound / MIB:,.0f} MiB)",
            grown / MIB,
            bound / MIB,
            "MiB",
            "<=",
        ),
        Goal("probe TTFP p50 beside slow readers / alone", ratio, GOAL_QOS_RATIO, "x", "<="),
    ]
    section = {
        "clients": n,
        "held": info["held"],
        "failures": info["failures"],
        "prompt_bytes": prompt,
        "credit_window_bytes": window,
        "bound_per_reader_bytes": per_reader,
        "rss_bound_bytes": bound,
        "rss_before_bytes": rss0,
        "rss_with_readers_bytes": rss1,
        "rss_after_probes_bytes": rss2,
        "rss_growth_bytes": grown,
        "probe_ratio_p50": ratio,
        "probes_alone": alone,
        "probes_beside": beside,
    }
    return section, goals


# ---------------------------------------------------------------------- capacity


def capacity(o: Options, say: Say) -> tuple[dict[str, Any], list[Goal]]:
    """Item 4: open-loop steps of rising rate until p99 TTFP passes 100 ms, the rate is
    not sustained, or streams fail; the largest step that held is the capacity."""
    steps = []
    best = 0.0
    with fleet.adapters(o.adapters, _persona(o)) as ad:
        with fleet.router(ad.urls, transport=o.transport, workers=o.workers) as r:
            for rate in o.sweep:
                say(f"capacity: {rate:,.0f} streams/s")
                step_o = replace(o, rate=rate, concurrency=0)
                res = drive.run(
                    _plans(step_o, "router", r, ad.urls),
                    router_pid=r.proc.pid,
                    adapter_pids=ad.pids,
                    progress=_progress(say, f"capacity {rate:,.0f}/s"),
                )
                t = res["total"]
                held = (
                    t["ttfp_ms"]["p99"] < GOAL_CAPACITY_P99_MS
                    and res["streams_per_s"] >= 0.95 * rate
                    and t["failed"] == 0
                    and t["unfinished"] == 0
                )
                router = res["router"] or {}
                steps.append(
                    {
                        "offered": rate,
                        "streams_per_s": res["streams_per_s"],
                        "frames_per_s": res["frames_per_s"],
                        "ttfp_ms": t["ttfp_ms"],
                        "ttf_ms": t["ttf_ms"],
                        "errors": t["errors"],
                        "router_cpu_pct": router.get("cpu_pct", 0.0),
                        "router_runqueue_wait_pct": router.get("runqueue_wait_pct", 0.0),
                        "router_rss_peak_bytes": router.get("rss_peak_bytes", 0),
                        "adapters_cpu_pct": (res["adapters"] or {}).get("cpu_pct", 0.0),
                        "client_cpu_pct": res["client_cpu_pct"],
                        "held": held,
                    }
                )
                if not held:
                    break
                # held: every offered stream finished, none failed, p99 under the bound; the
                # rate it held is the offered one (the measured rate counts only streams that
                # ended inside the window, so it reads 999.x at 1,000 offered)
                best = max(best, float(rate))
    goals = [
        Goal("capacity: sustained streams/s with TTFP p99 < 100 ms", best, GOAL_RATE, "streams/s")
    ]
    return {"steps": steps, "capacity_streams_per_s": best, "workers": o.workers}, goals


# ---------------------------------------------------------------------- open streams


def open_streams(o: Options, say: Say) -> tuple[dict[str, Any], list[Goal]]:
    """Item 4: ``n`` streams open at once (the adapter answers after 10 minutes); router
    RSS before and after, memory per open stream."""
    n, per_session = o.open_streams, 100
    admission = {"initial_limit": n + 64, "max_limit": n + 64, "max_queue": 1024}
    opts = {"latency_ms": "600000", "chunks": "1"}
    with fleet.adapters(1, opts, prefix="hold") as ad:
        with fleet.router(ad.urls, transport="ws", admission=admission) as r:
            time.sleep(_settle(o) / 4)
            rss0 = fleet.rss(fleet.tree(r.proc.pid))
            say(f"open streams: opening {n:,}")
            with Holder("open-streams", r.url, n, per_session, "hold1", timeout=600) as h:
                time.sleep(_settle(o))
                rss1 = fleet.rss(fleet.tree(r.proc.pid))
                info = h.info
    opened = info["streams"]
    per = (rss1 - rss0) / opened if opened else 0.0
    goals = [Goal(f"streams open at once (of {n:,})", opened, n, "streams")]
    section = {
        "streams": n,
        "opened": opened,
        "sessions": info["sessions"],
        "failures": info["failures"],
        "open_s": info["open_s"],
        "rss_before_bytes": rss0,
        "rss_after_bytes": rss1,
        "bytes_per_stream": per,
        "rss_at_10k_bytes": rss0 + per * 10_000,
    }
    return section, goals


SCENARIOS = {
    "load": load,
    "qos": qos,
    "slow-readers": slow_readers,
    "capacity": capacity,
    "open-streams": open_streams,
}
