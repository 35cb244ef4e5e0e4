"""End-to-end load benchmark (issue 14 items 1-4, 7): ``atp bench e2e``.

A load generator in its own processes (``--procs``, forked, each trio + the library's
session driver over the shared raw WebSocket client, or QUIC) drives many concurrent
streams in mixed QoS lanes at a real ``atp serve`` process whose adapters are real gRPC
persona processes (``atp adapter serve persona``), open-loop at ``--rate`` (latency from
each stream's intended send time: coordinated omission corrected) or closed-loop at
``--concurrency``. Latencies go to HDR histograms (the ``hdrhistogram`` package), the
router's CPU and RSS are sampled from ``/proc``. See :mod:`benchmarks._load`.

Scenarios (``--scenario``, default ``all``):

* ``load``: the load through the router, then the same load straight to the same adapter
  processes over gRPC; the router's added latency per percentile (goals: added TTFP p50
  <= 0.3 ms and p99 <= 2 ms at 1,000 streams/s). The persona adapters send
  ``max_age_ms`` with their estimates (``--estimate-max-age-ms``, default 1000; 0: none),
  so the router answers most preflights from a reused estimate (ATP-BUDGET-018) instead
  of an ``Estimate`` round trip; the table says which.
* ``qos``: gold alone; gold beside bronze flooding at 5x the admission's capacity; bronze
  at half of it honouring ``retry_after_ms`` (gold p99 within 1.2x, gold never shed, bronze
  shed with EPREEMPT + ``retry_after_ms``, recovery without a retry storm).
* ``slow-readers``: 1,000 clients that stop reading: router RSS within a stated bound,
  probes beside them not slowed.
* ``capacity``: a rate sweep; the largest sustained streams/s with p99 TTFP < 100 ms.
* ``open-streams``: 10,000 streams open at once; memory per open stream.

``--quick`` shrinks every scenario (about a minute in all) and is not judged (exit 0);
``--json`` prints the result object; ``--plot DIR`` writes PNGs and ``index.html`` (images
inlined). ``--workers N`` is passed to ``atp serve`` (issue 14 item 5) when it has it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import _report

if TYPE_CHECKING:
    from ._load.scenarios import Options

# Only the light modules above at import time: `atp` builds its parser (and so imports this
# module for add_options) on every command, `atp serve` included. The load machinery
# (trio, atp_proto.testing, hdrhistogram) is imported when the benchmark runs.

ALL = ("load", "qos", "slow-readers", "capacity", "open-streams")


def _lanes(text: str) -> tuple[tuple[str, float], ...]:
    out = []
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip().lower()
        if name not in ("gold", "silver", "bronze"):
            raise argparse.ArgumentTypeError(f"lane must be gold, silver or bronze, not {name!r}")
        try:
            w = float(weight or 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight {weight!r} for lane {name}") from None
        if w <= 0:
            raise argparse.ArgumentTypeError(f"lane {name}: weight must be positive")
        out.append((name, w))
    return tuple(out)


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("all",):
        return ALL
    bad = [n for n in names if n not in ALL]
    if bad or not names:
        # `atp bench e2e: error: --scenario: nope is not one of all, load, ...`
        raise argparse.ArgumentTypeError(
            f"{','.join(bad) or repr(text)} is not one of all, {', '.join(ALL)}"
        )
    return names


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of rates: {text!r}") from None
    if not rates or min(rates) <= 0 or not all(math.isfinite(r) and r <= 1e6 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive, at most 1e6")
    return rates


def _positive(kind: type, most: float = math.inf) -> Any:
    """A positive, finite number of at most ``most`` (what a run may ask for: processes,
    clients and rates are bounded, so a typo cannot fork 100,000 load processes)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        if value > most:
            raise argparse.ArgumentTypeError(f"at most {most:g}, got {text}")
        return value

    return parse


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _age_ms(text: str) -> int:
    """An Estimate max_age_ms: an integer 0..2^32-1 (a uint32 on the wire)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be 0..4294967295, not {value}")
    return value


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario",
        type=_scenarios,
        default=ALL,
        help=f"what to run, comma-separated: all (default) or of {', '.join(ALL)}",
    )
    p.add_argument(
        "--transport",
        choices=("ws", "quic"),
        default="ws",
        help="how clients reach the router (default ws; quic is on loopback with a dev cert)",
    )
    p.add_argument("--rate", type=_positive(float, 1e6), help="open loop: streams/s (default 1000)")
    p.add_argument(
        "--concurrency",
        type=_positive(int, 100_000),
        help="closed loop: concurrent clients instead",
    )
    p.add_argument("--duration", type=_positive(float, 86_400), help="seconds per run (default 10)")
    p.add_argument(
        "--warmup", type=_not_negative, help="seconds not recorded at the start (default 1)"
    )
    p.add_argument(
        "--prompt-bytes",
        type=_positive(int, 1 << 20),
        default=64,
        help="size of each stream's prompt in bytes (default 64)",
    )
    p.add_argument("--chunks", type=_positive(int, 10_000), default=4, help="PARTIALs per answer")
    p.add_argument(
        "--chunk-delay-ms", type=_not_negative, default=0.0, help="adapter delay per chunk"
    )
    p.add_argument("--adapters", type=_positive(int, 64), default=2, help="persona processes")
    p.add_argument("--procs", type=_positive(int, 64), default=2, help="load processes")
    p.add_argument(
        "--sessions", type=_positive(int, 10_000), default=4, help="sessions per process"
    )
    p.add_argument(
        "--lanes", type=_lanes, default=_lanes("gold,silver,bronze"), help="e.g. gold=1,bronze=3"
    )
    p.add_argument(
        "--workers", type=_positive(int, 64), default=1, help="passed to atp serve --workers"
    )
    p.add_argument("--slow-readers", type=_positive(int, 100_000), help="default 1000 (quick 200)")
    p.add_argument(
        "--open-streams", type=_positive(int, 100_000), help="default 10000 (quick 1000)"
    )
    p.add_argument("--sweep", type=_rates, help="capacity: offered rates, e.g. 200,400,800")
    p.add_argument(
        "--estimate-max-age-ms",
        type=_age_ms,
        default=1000,
        help="the persona adapters' Estimate max_age_ms: how long the router may reuse an "
        "estimate (default 1000; 0: an Estimate call before every stream)",
    )
    p.add_argument("--plot", metavar="DIR", help="write PNG plots and index.html to DIR")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")


#: options only one scenario reads: (dest, flag, scenario)
_SCENARIO_ONLY = (
    ("slow_readers", "--slow-readers", "slow-readers"),
    ("open_streams", "--open-streams", "open-streams"),
    ("sweep", "--sweep", "capacity"),
)


def check_options(args: argparse.Namespace) -> str | None:
    """Why the options given would not all act (``atp bench`` says it, exit 2), else
    None: one that the scenarios chosen do not read, or two of which one wins."""
    if args.rate is not None and args.concurrency is not None:
        return "--rate (open loop) and --concurrency (closed loop) exclude each other"
    for dest, flag, scenario in _SCENARIO_ONLY:
        if getattr(args, dest) is not None and scenario not in args.scenario:
            return f"{flag} is for --scenario {scenario}, which this run does not include"
    if args.json and args.markdown:
        return "--json and --markdown exclude each other: pick one output"
    return None


def options(args: argparse.Namespace) -> Options:
    from ._load.scenarios import Options

    quick = bool(args.quick)
    o = Options(quick=quick)
    if quick:
        o = replace(
            o,
            rate=300.0,
            duration=3.0,
            warmup=0.5,
            slow_readers=200,
            open_streams=1000,
            sweep=(50, 150, 300),
        )
    o = replace(
        o,
        transport=args.transport,
        rate=args.rate or o.rate,
        concurrency=args.concurrency or 0,
        duration=args.duration or o.duration,
        warmup=o.warmup if args.warmup is None else args.warmup,
        prompt_bytes=args.prompt_bytes,
        chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        adapters=args.adapters,
        procs=args.procs,
        sessions=args.sessions,
        lanes=args.lanes,
        workers=args.workers,
        slow_readers=args.slow_readers or o.slow_readers,
        open_streams=args.open_streams or o.open_streams,
        sweep=args.sweep or o.sweep,
        estimate_max_age_ms=args.estimate_max_age_ms,
    )
    from atp_proto.cli import UsageError

    if o.warmup >= o.duration:
        raise UsageError(f"--warmup ({o.warmup:g} s) must be shorter than --duration")
    if o.workers > 1:
        from ._load.fleet import serve_has_workers

        if not serve_has_workers():
            raise UsageError(
                "--workers needs `atp serve --workers N` (issue 14 item 5), which this "
                "installation does not have"
            )
    return o


def run_benchmark(o: Options, which: tuple[str, ...], progress: Any = None) -> dict[str, Any]:
    from . import _harness
    from ._load import scenarios

    say = progress or (lambda _text: None)
    results: dict[str, Any] = {}
    goals: list[_report.Goal] = []
    for name in which:
        section, g = scenarios.SCENARIOS[name](o, say)
        results[name] = section
        goals += g
    settings = {k: v for k, v in vars(o).items() if k != "quick"}
    settings["lanes"] = dict(o.lanes)
    settings["scenarios"] = list(which)
    return _report.result(
        "e2e",
        machine=_harness.machine_info(trio="trio", hdrhistogram="hdrhistogram"),
        settings=settings,
        results=results,
        goals=goals,
        quick=o.quick,
        host_note="shared host: other agents' load runs beside this benchmark",
    )


# ---------------------------------------------------------------------- output


def _pcts(d: dict[str, Any]) -> str:
    if "n" in d and not d["n"]:
        return "— (none completed)"
    return f"{d['p50']:.2f} / {d['p95']:.2f} / {d['p99']:.2f} / {d['max']:.1f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{code} {n:,}" for code, n in sorted(errors.items())) or "none"


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, measured, beside) rows of every scenario that ran."""
    r = result["results"]
    rows: list[tuple[str, str, str]] = []
    if "load" in r:
        L = r["load"]
        rt, dr = L["router"], L["direct"]
        rows.append(
            (
                f"load: streams/s, frames/s ({rt['workers']} load processes)",
                f"{rt['streams_per_s']:,.0f}, {rt['frames_per_s']:,.0f}",
                f"direct gRPC: {dr['streams_per_s']:,.0f}, {dr['frames_per_s']:,.0f}",
            )
        )
        for lane, s in rt["lanes"].items():
            rows.append(
                (
                    f"  {lane}: TTFP ; FINAL p50/p95/p99/max ms",
                    f"{_pcts(s['ttfp_ms'])} ; {_pcts(s['ttf_ms'])}",
                    f"errors {_errors(s['errors'])}, shed {s['shed_rate']:.1%}",
                )
            )
        age = L.get("estimate_max_age_ms", 0)
        rows.append(
            (
                "  preflight: the adapters' Estimate max_age_ms",
                f"{age:,} ms" if age else "0 (no reuse)",
                "the router reuses an estimate that long per class (ATP-BUDGET-018)"
                if age
                else "an Estimate round trip before every Stream call",
            )
        )
        est = L.get("estimates") or {}
        if est.get("reuse_rate") is not None:
            rows.append(
                (
                    "  preflight estimates reused (router's atp_estimates_total)",
                    f"{est['reuse_rate']:.1%}",
                    f"{est['reused']:,} reused, {est['called']:,} Estimate calls",
                )
            )
        elif est:
            rows.append(
                (
                    "  preflight estimates reused (router's atp_estimates_total)",
                    "— (not read)",
                    "no metrics port answered, or no preflight counted",
                )
            )
        a = L["added"]
        rows.append(
            (
                "  router added TTFP ; FINAL p50/p95/p99/max ms",
                f"{_pcts(a['ttfp_ms'])} ; {_pcts(a['ttf_ms'])}",
                f"direct TTFP {_pcts(dr['total']['ttfp_ms'])}",
            )
        )
        per_stream = L.get("router_cpu_ms_per_stream")
        if per_stream is not None:
            rows.append(
                (
                    "  router CPU per stream",
                    f"{per_stream * 1000:,.0f} µs",
                    "CPU seconds over the run ÷ its streams (the figure a loaded host moves least)",
                )
            )
        if rt["router"]:
            rows.append(
                (
                    "  router CPU (% of a core; waiting for a CPU), peak RSS",
                    f"{rt['router']['cpu_pct']:.0f}% ({rt['router']['runqueue_wait_pct']:.0f}%), "
                    f"{rt['router']['rss_peak_bytes'] / 2**20:,.0f} MiB",
                    f"CPU: load processes {rt['client_cpu_pct']:.0f}%, adapters "
                    f"{(rt['adapters'] or {}).get('cpu_pct', 0):.0f}% (direct run: "
                    f"{(dr['adapters'] or {}).get('cpu_pct', 0):.0f}%)",
                )
            )
    if "qos" in r:
        q = r["qos"]
        runs = q["runs"]
        alone = runs["gold_alone"]["lanes"]["gold"]
        beside = runs["gold_beside_flood"]["lanes"]["gold"]
        bronze = runs["gold_beside_flood"]["lanes"]["bronze"]
        rec = runs["bronze_recovery"]["lanes"]["bronze"]
        rows += [
            (
                f"qos: gold TTFP p50/p95/p99/max ms, bronze at {q['bronze_flood_rate']:,.0f}/s",
                _pcts(beside["ttfp_ms"]),
                f"gold alone: {_pcts(alone['ttfp_ms'])}",
            ),
            (
                "  gold shed / bronze shed (of attempts)",
                f"{beside['shed']} / {bronze['shed_rate']:.1%}",
                f"capacity {q['capacity_streams_per_s']:,.0f} streams/s",
            ),
            (
                f"  bronze recovery at {q['bronze_recovery_rate']:,.0f}/s: completed, attempts",
                f"{rec['completed']} of {rec['requests']}, {rec['attempts']}",
                f"retries {rec['retries']}",
            ),
        ]
    if "slow-readers" in r:
        s = r["slow-readers"]
        rows += [
            (
                f"slow readers: {s['held']:,} held, router RSS growth",
                f"{s['rss_growth_bytes'] / 2**20:,.1f} MiB",
                f"bound {s['rss_bound_bytes'] / 2**20:,.0f} MiB",
            ),
            (
                "  probe TTFP p50/p95/p99/max ms beside them",
                _pcts(s["probes_beside"]["lanes"]["gold"]["ttfp_ms"]),
                f"alone: {_pcts(s['probes_alone']['lanes']['gold']['ttfp_ms'])}",
            ),
        ]
    if "capacity" in r:
        c = r["capacity"]
        for st in c["steps"]:
            rows.append(
                (
                    f"capacity: offered {st['offered']:,.0f}/s → streams/s, TTFP p50/p99 ms",
                    f"{st['streams_per_s']:,.0f}, {st['ttfp_ms']['p50']:.2f} / "
                    f"{st['ttfp_ms']['p99']:.2f}",
                    f"CPU router {st['router_cpu_pct']:.0f}% (waiting for a CPU "
                    f"{st['router_runqueue_wait_pct']:.0f}%), adapters "
                    f"{st['adapters_cpu_pct']:.0f}%" + ("" if st["held"] else " (limit)"),
                )
            )
    if "open-streams" in r:
        o = r["open-streams"]
        rows.append(
            (
                f"open streams: {o['opened']:,} at once, router RSS",
                f"{o['bytes_per_stream'] / 1024:,.1f} KiB/stream",
                f"{o['rss_before_bytes'] / 2**20:,.0f} → {o['rss_after_bytes'] / 2**20:,.0f} MiB",
            )
        )
    return rows


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    m = result["machine"]
    console.print(
        f"atp bench e2e — {m['cpu_model']}, {m['cpu_count']} cores, Python {m['python']}, "
        f"{result['date']}, transport {result['settings']['transport']}"
        + _report.quick_note(result),
        markup=False,
    )
    table = Table()
    for col in ("scenario", "measured", "beside it (same run)"):
        table.add_column(col)
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    _report.print_summary(console, _report.summary_lines(result))


def markdown(result: dict[str, Any]) -> str:
    return _report.markdown_table(
        ("scenario", "measured", "beside it (same run)"), table_rows(result), result
    )


def run(args: argparse.Namespace) -> int:
    """``atp bench e2e``: 1 when a full run misses a goal, else 0."""
    o = options(args)
    which = tuple(args.scenario)
    status = None
    progress = None
    if sys.stderr.isatty() and not args.json:
        from rich.console import Console

        status = Console(stderr=True).status("starting…")
        status.start()
        progress = status.update
    try:
        result = run_benchmark(o, which, progress)
    except RuntimeError as exc:  # a process did not start or a worker failed: one line
        print(f"atp bench e2e: {exc}", file=sys.stderr)
        return 1
    finally:
        if status is not None:
            status.stop()
    if args.plot:
        from ._load import plot

        result["plots"] = plot.write(result, args.plot)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif args.markdown:
        print(markdown(result))
    else:
        render(result)
    return _report.exit_code(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    add_options(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
