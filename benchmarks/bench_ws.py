"""WebSocket relay benchmark: one router process relaying PARTIAL frames from a
``builtin:echo`` adapter to raw sans-IO clients over loopback, beside a bare trio-websocket
echo measured in the same run.

Run it as ``atp bench ws [--json] [--quick]`` (or ``python -m benchmarks.bench_ws``).
This module runs the scenarios and judges the goals; the scenarios live in
:mod:`benchmarks.ws` (settings, throughput, baseline, latency, sessions, report) and the
raw load client in :mod:`benchmarks._loadgen`.

Each router is a separate process started as ``python -m atp_proto serve --no-auth --ws
127.0.0.1:0 --metrics off --max-sessions 20000 --adapter ...`` (through a small ``-c``
wrapper that first raises RLIMIT_NOFILE); its address is read from its "router listening"
log line. The clients speak ATP through the sans-IO :class:`~atp_proto.frames.Connection`
directly (no :mod:`atp_proto.client` layers) over the shared raw wsproto client
(:mod:`atp_proto.transports.ws_client`, no reader task), acknowledging credit once per
received WebSocket message per stream. (Until issue 10 the throughput and background
clients used trio-websocket; figures recorded before then include its client-side hops.)

Scenarios:

* **throughput** — N streams × M PARTIALs. A stream's SYN carries a prompt of 200·M
  characters and ``meta {"adapters": ["echo"]}``; the router's adapter is
  ``builtin:echo?chunks=M``, so it relays M PARTIAL frames, each carrying a 200-character
  chunk (the PARTIAL frame is ~309 B: 24 B header, a CBOR payload holding the chunk plus
  ``type``, ``chunk``, ``adapter``, ``confidence``), then a FINAL. Two client processes,
  50 streams per session. frames/s = PARTIAL frames received by the clients / wall time
  from the first SYN sent to the last FINAL received (a steady-state rate, first to last
  PARTIAL, is shown too). The router's and the clients' CPU use over that interval are
  reported, to show which side is the limit.
* **baseline** — a bare trio-websocket echo server (its own process) and a trio-websocket
  client in the benchmark process sending one 200-byte message per frame, 64 in flight;
  echoed messages/s.
* **picows baseline** — the fastest Python WebSocket echo a user would pick: picows
  (asyncio + C) in its own process, driven by the throughput scenario's own client and
  workload (the same two client processes, raw wsproto client, sessions of 50 streams,
  streams × M messages of 200 bytes, 64 in flight per session, sends coalesced); echoed
  messages/s, and the server's and clients' CPU (``benchmarks/_ws_echo.py``). The echo and
  the relay's throughput scenario are alternated (3 rounds; 2 with ``--quick``) and the
  goal compares their medians: on a loaded host one run of each moves by a third. For
  reference (not a goal), the same echo driven by picows' own C client: it shows how much
  of the echo figure is the Python client's cost.
* **latency** — with 1,000 concurrent streams open and streaming (a background client
  process; adapter ``builtin:echo?chunks=K&latency_ms=100``, i.e. one PARTIAL per stream
  every 100 ms, ~10k PARTIALs/s in all), a probe client sends one SYN at a time (adapter
  ``builtin:echo``: one PARTIAL, then a FINAL) and measures **SYN→first PARTIAL**: from
  just before the SYN is handed to the WebSocket until the message holding the first
  PARTIAL is received (``time.perf_counter``, same process; nothing subtracted: it
  includes the probe's WebSocket and ATP encoding, the kernel both ways, parsing the SYN,
  the adapter's Estimate, admission and the first chunk). The probe speaks WebSocket
  with the shared raw wsproto client in its own task (:class:`._loadgen.RawWs`), as a load
  generator should: a client
  library's reader-task hop (trio-websocket's) would add its own scheduling to the
  router's figure. Also reported: the gaps between consecutive PARTIALs of
  the paced background streams (ideally 100 ms; the excess is scheduling delay).
  The router gets ``[admission] initial_limit = 2048`` (config file): with the default
  AIMD limit of 64 and a queue of 256, 1,000 long streams cannot be open at once.
* **idle sessions** — a client process opens 10,000 WebSocket sessions (raw wsproto on
  trio: handshake, one CAPABILITIES exchange, then idle) to a fresh router; the router's
  VmRSS (``/proc/PID/status``) is read before (10 warm sessions open) and after.

Goals (a full run exits 1 when one fails): relay ≥ 100,000 PARTIAL frames/s, ≥ 10× the
trio-websocket baseline and ≥ 1.0× the picows echo (issue 14 item 6); SYN→first PARTIAL
p50 ≤ 0.5 ms with 1,000 concurrent streams; router RSS with 10,000 idle sessions ≤ 1 GiB.
``--quick`` scales everything down (1,000 idle sessions, RSS extrapolated to 10,000; 100
background streams); its numbers are rough, so it reports the goals without judging them
and exits 0 (``benchmarks/_report.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from . import _harness, _report, _ws_echo
from ._harness import RouterProcess
from ._report import Goal, judge
from .ws.baseline import bench_baseline
from .ws.latency import bench_latency
from .ws.report import markdown, median, render, summary_lines, table_rows
from .ws.sessions import bench_sessions
from .ws.settings import (
    CHUNK,
    FULL,
    GIB,
    GOAL_FPS,
    GOAL_P50_MS,
    GOAL_RSS,
    GOAL_VS_BASELINE,
    GOAL_VS_PICOWS,
    PACE_MS,
    QUICK,
    WINDOW,
    Sizes,
)
from .ws.throughput import bench_throughput

__all__ = [  # the scenarios and the output stay importable from here
    "FULL",
    "QUICK",
    "Sizes",
    "bench_baseline",
    "bench_latency",
    "bench_sessions",
    "bench_throughput",
    "machine_info",
    "main",
    "markdown",
    "render",
    "run",
    "run_benchmark",
    "summary_lines",
    "table_rows",
]


def _picows_result(
    echo: _ws_echo.PicowsEcho,
    runs: list[dict[str, Any]],
    relay_rounds: list[float],
    sz: Sizes,
) -> dict[str, Any]:
    """The picows baseline's JSON: the median run's figures, every round, the goal's
    ratio (median relay frames/s over median echo msg/s) and the reference run."""
    rates = [r["messages_per_s"] for r in runs]
    median_run = sorted(runs, key=lambda r: r["messages_per_s"])[len(runs) // 2]
    return {
        "server": echo.server,
        **median_run,
        "messages_per_s": median(rates),
        "rounds": len(runs),
        "round_messages_per_s": rates,
        "relay_round_frames_per_s": relay_rounds,
        "relay_vs_echo": median(relay_rounds) / median(rates),
        "picows_client": echo.run(sz.streams, sz.frames, WINDOW, own_client=True),
    }


def machine_info() -> dict[str, Any]:
    return _harness.machine_info(trio="trio", trio_websocket="trio-websocket", picows="picows")


_ADMISSION = "[admission]\ninitial_limit = 2048\nmax_limit = 4096\nmax_queue = 4096\n"


def run_benchmark(quick: bool, progress: Any = None) -> dict[str, Any]:
    sz = QUICK if quick else FULL

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    say("idle sessions …")
    sessions = bench_sessions(sz.sessions)
    say("baseline: trio-websocket echo …")
    baseline = bench_baseline(sz.baseline_s)
    adapters = {
        "echo": f"builtin:echo?chunks={sz.frames}",
        "probe": "builtin:echo",
        "paced": f"builtin:echo?chunks=300&latency_ms={PACE_MS}",
    }
    router = RouterProcess(adapters, _ADMISSION)
    echo: _ws_echo.PicowsEcho | None = None
    try:
        say("throughput: warm-up …")
        bench_throughput(router.url, router.pid, max(2, sz.streams // 10), sz.frames)
        say("throughput …")
        throughput = bench_throughput(router.url, router.pid, sz.streams, sz.frames)
        picows = None
        if _ws_echo.available():
            echo = _ws_echo.PicowsEcho()
            # the picows goal: relay and echo alternated, medians compared (a loaded host
            # moves single runs by a third)
            relay_rounds = [throughput["frames_per_s"]]
            echo_runs: list[dict[str, Any]] = []
            say("baseline: picows echo, the relay's client and workload …")
            echo.run(max(2, sz.streams // 10), sz.frames, WINDOW)  # warm-up
            for i in range(sz.rounds):
                say(f"picows echo / relay, round {i + 1} of {sz.rounds} …")
                echo_runs.append(echo.run(sz.streams, sz.frames, WINDOW))
                if i + 1 < sz.rounds:
                    again = bench_throughput(router.url, router.pid, sz.streams, sz.frames)
                    relay_rounds.append(again["frames_per_s"])
            say("picows echo with its own client (reference) …")
            picows = _picows_result(echo, echo_runs, relay_rounds, sz)
        say("latency …")
        latency = bench_latency(router.url, sz.background, sz.probes)
    finally:
        router.close()
        if echo is not None:
            echo.close()

    fps = throughput["frames_per_s"]
    ratio = fps / baseline["messages_per_s"]
    p50 = latency["syn_to_first_partial_ms"]["p50"]
    rss10k = sessions["rss_at_10k_bytes"]
    goals = [
        Goal("relay PARTIAL frames/s", fps, GOAL_FPS, "frames/s"),
        Goal("relay vs trio-websocket echo baseline", ratio, GOAL_VS_BASELINE, "x"),
    ]
    if picows is not None:  # picows is in the dev extra; without it, no goal against it
        goals.append(
            Goal(
                "relay frames/s vs picows echo msg/s (same client and workload, medians "
                f"of {sz.rounds} interleaved rounds)",
                picows["relay_vs_echo"],
                GOAL_VS_PICOWS,
                "x",
            )
        )
    goals += [
        Goal(
            f"SYN→first PARTIAL p50 with {sz.background:,} concurrent streams",
            p50,
            GOAL_P50_MS,
            "ms",
            "<=",
        ),
        Goal(
            "router RSS with 10,000 idle sessions"
            + (f" (extrapolated from {sz.sessions:,})" if sessions["extrapolated"] else ""),
            rss10k / GIB,
            GOAL_RSS / GIB,
            "GiB",
            "<=",
        ),
    ]
    return {
        "benchmark": "ws",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "quick": quick,
            "chunk_chars": CHUNK,
            "streams": sz.streams,
            "frames_per_stream": sz.frames,
            "baseline_seconds": sz.baseline_s,
            "background_streams": sz.background,
            "probes": sz.probes,
            "idle_sessions": sz.sessions,
            "picows_rounds": sz.rounds,
            "router_adapters": adapters,
            "router_admission": {"initial_limit": 2048, "max_limit": 4096, "max_queue": 4096},
        },
        "results": {
            "throughput": throughput,
            "baseline": baseline,
            "picows": picows,
            "latency": latency,
            "sessions": sessions,
        },
        **judge(goals, quick=quick),
    }


def run(args: argparse.Namespace) -> int:
    """``atp bench ws``: 1 when a full run misses a goal, else 0 (a quick run is not
    judged)."""
    progress = None
    status = None
    if sys.stderr.isatty() and not args.json:
        from rich.console import Console

        status = Console(stderr=True).status("measuring…")
        status.start()
        progress = status.update
    try:
        result = run_benchmark(quick=args.quick, progress=progress)
    finally:
        if status is not None:
            status.stop()
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif getattr(args, "markdown", False):
        print(markdown(result))
    else:
        render(result)
    return _report.exit_code(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
