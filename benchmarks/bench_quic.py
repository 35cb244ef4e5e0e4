"""The router over QUIC (spec §13.2), beside two bare aioquic echoes measured in the same run.

Run it as ``atp bench quic [--json] [--quick]`` (or ``python -m benchmarks.bench_quic``).

What is measured (``atp serve --quic`` in a subprocess, our client in this process):

* **frames/s**: 200-byte PARTIALs relayed by the router (the echo adapter cutting a long
  prompt into 200-byte chunks) to our QUIC client, over several concurrent streams; and,
  as information beside it, the same PARTIALs from a 200-byte prompt (``repeat``): the
  first row's SYN carries the whole answer's size (500 KB a stream, as many bytes
  upstream as the PARTIALs bring down), work that the echo baselines do not do;
* **MB/s**: the same with 16 KiB chunks (payload bytes received per second);
* **baselines**, in the same run: an aioquic asyncio echo server (subprocess) and client
  (this process) moving the same message sizes on concurrent streams, once with aioquic's
  defaults (1,200-byte datagrams) and once tuned as our transport tunes itself on loopback
  (8,000-byte datagrams, the same flow-control windows, the same 4 MiB socket buffers:
  with the default ones a loaded host drops the echo's datagrams, which would slow the
  baseline for a reason that is not its protocol code). Not the same in one respect: our
  transport uses UDP GSO / GRO where Linux has them (one system call for a run of
  datagrams), the echoes asyncio's one ``sendto`` / ``recvfrom`` per datagram: a
  transport feature a user of ours gets, printed with the counts of our client's calls;
* **SYN -> first PARTIAL** latency on a new stream while 1,000 streams are open (ten QUIC
  sessions of 100, aioquic's per-connection stream limit being 128);
* **one slow stream**: the latency of quick streams on a session whose other stream is
  stalled (its client does not read; its QUIC stream is blocked by credit), against the
  same session without it. Over QUIC the stall must not spread: ratio about 1;
* **CPU per frame**, beside each rate: the CPU time (user + system) each end used during
  the run divided by the frames (or echoed messages) it moved — the router process and
  our client, the echo server process and its client. On a loaded host the rates follow
  how much CPU the other tenants leave; the CPU per frame barely does, so it tells where a
  gap comes from even when the rates are noise.

Goals (issue 12): >= 50k frames/s and >= 30 MB/s through the router; >= 2x the default
baseline; >= 1.0x the tuned baseline; the slow stream's ratio <= 1.5. A ``--quick`` run
reports them, not judged, and exits 0 (``benchmarks/_report.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _harness, _report
from ._quic_echo import _baseline, _cpu_s
from ._report import Goal

FRAME = 200
BULK = 16 * 1024
GOAL_FPS = 50_000
GOAL_MBPS = 30.0
GOAL_VS_DEFAULT = 2.0
GOAL_VS_TUNED = 1.0
GOAL_SLOW_RATIO = 1.5


# ------------------------------------------------------------------ through the router


async def _lean_stream_rate(
    url: str, ca: str, prompt_bytes: int, streams: int, adapter: str, router_pid: int
) -> dict[str, float]:
    """PARTIALs/s and payload bytes/s relayed to a lean client: our QUIC transport and
    session driver (the same as :func:`atp_proto.client.connect`'s) counting frames and
    returning credit at once, without decoding each result into a Python object — so
    the figure is the router's and the transport's, not the convenience API's. Also the
    router's and this client's CPU microseconds per PARTIAL over the same interval, and
    this client's UDP datagrams and system calls both ways (``udp``: what GSO / GRO
    saved)."""
    from urllib.parse import urlsplit

    import trio

    from atp_proto.frames import Limits, MessageReceived, QoS, Role
    from atp_proto.messages import STREAMED_FINAL, task_body
    from atp_proto.session import Session
    from atp_proto.transports.quic_client import connect_quic

    parts = urlsplit(url)
    assert parts.hostname and parts.port
    counts = {"frames": 0, "bytes": 0, "open": streams}
    done = trio.Event()
    async with connect_quic(parts.hostname, parts.port, ca_file=ca) as transport:
        session: Session

        def on_event(ev: object) -> None:
            if isinstance(ev, MessageReceived):
                session.conn.acknowledge(ev.stream_id, ev.size)
                if ev.end_stream:
                    counts["open"] -= 1
                    if counts["open"] == 0:
                        done.set()
                else:
                    counts["frames"] += 1
                    counts["bytes"] += len(ev.payload)

        session = Session(
            transport, role=Role.CLIENT, limits=Limits(), session_id="bench", on_event=on_event
        )
        session.conn.send_capabilities()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            body = task_body("y" * prompt_bytes, None)
            ep = transport.endpoint
            udp0 = _udp_counts(ep)
            start = trio.current_time()
            cpu0, router0 = time.process_time(), _cpu_s(router_pid)
            for _ in range(streams):
                session.conn.open_stream(
                    body,
                    qos=QoS.GOLD,
                    # what atp_proto.client sends by default: the FINAL need not
                    # repeat the answer the PARTIALs carried (spec §15.5)
                    meta={"task_type": "qa", "adapters": [adapter], **STREAMED_FINAL},
                    now=trio.current_time(),
                )
            session.kick()
            await done.wait()
            elapsed = trio.current_time() - start
            client_cpu, router_cpu = time.process_time() - cpu0, _cpu_s(router_pid) - router0
            udp = {k: v - udp0[k] for k, v in _udp_counts(ep).items()}
            udp |= {"gso": ep.gso, "gro": ep.gro}
            nursery.cancel_scope.cancel()
    frames = max(counts["frames"], 1)
    return {
        "frames_per_s": counts["frames"] / elapsed,
        "bytes_per_s": counts["bytes"] / elapsed,
        "router_cpu_us": router_cpu / frames * 1e6,
        "client_cpu_us": client_cpu / frames * 1e6,
        "udp": udp,
    }


def _udp_counts(ep: Any) -> dict[str, int]:
    return {
        "datagrams_sent": ep.datagrams_sent,
        "send_calls": ep.send_calls,
        "datagrams_received": ep.datagrams_received,
        "receive_calls": ep.receive_calls,
        "datagrams_truncated": ep.datagrams_truncated,
    }


async def _router_rate(
    url: str, ca: str, size: int, streams: int, chunks: int, router_pid: int
) -> dict[str, float]:
    """Frames/s of ``size``-byte PARTIALs over ``streams`` concurrent streams."""
    return await _lean_stream_rate(url, ca, size * chunks, streams, "echo", router_pid)


async def _latency_with_open_streams(url: str, ca: str, open_streams: int, samples: int) -> Any:
    """SYN -> first PARTIAL on a fresh stream while ``open_streams`` stay open."""
    import trio

    from atp_proto.client import connect

    per_session = 100
    lat: list[float] = []
    opened = [0]
    async with trio.open_nursery() as nursery:
        hold = trio.Event()

        async def holder(n: int, ready: trio.Event) -> None:
            async with connect(url, ca_file=ca) as client:

                async def keep() -> None:
                    async with client.stream("hold", meta={"adapters": ["slow"]}) as st:
                        opened[0] += 1
                        async for _ in st:
                            await hold.wait()

                async with trio.open_nursery() as inner:
                    for _ in range(n):
                        inner.start_soon(keep)
                    ready.set()
                    await hold.wait()
                    inner.cancel_scope.cancel()

        for i in range(0, open_streams, per_session):
            ready = trio.Event()
            nursery.start_soon(holder, min(per_session, open_streams - i), ready)
            await ready.wait()
        with trio.fail_after(60):
            while opened[0] < open_streams:
                await trio.sleep(0.05)
        async with connect(url, ca_file=ca) as client:
            for _ in range(samples):
                t0 = trio.current_time()
                async with client.stream("ping", meta={"adapters": ["echo"]}) as st:
                    async for _ in st:
                        lat.append(trio.current_time() - t0)
                        break
        hold.set()
        nursery.cancel_scope.cancel()
    return _harness._dist_ms(lat) | {"open_streams": open_streams}


async def _slow_stream(url: str, ca: str, samples: int) -> dict[str, float]:
    """Quick streams' latency beside a stalled stream on the same session, and without."""
    import trio

    from atp_proto.client import connect

    async def quick(client: Any) -> float:
        times = []
        for _ in range(samples):
            t0 = trio.current_time()
            await client.ask("quick", meta={"adapters": ["echo"]})
            times.append(trio.current_time() - t0)
        return sorted(times)[len(times) // 2]

    async with connect(url, ca_file=ca) as client:
        alone = await quick(client)
        async with client.stream("z" * 200_000, meta={"adapters": ["bulk"]}) as stalled:
            await trio.sleep(0.3)  # its window fills; the client never reads it
            beside = await quick(client)
            await stalled.cancel()
    return {
        "alone_p50_ms": alone * 1000,
        "beside_stalled_p50_ms": beside * 1000,
        "ratio": beside / alone if alone else 0.0,
    }


# ------------------------------------------------------------------ the run


def run_benchmark(*, quick: bool, progress: Any = None) -> dict[str, Any]:
    import trio

    from atp_proto.testing.certs import make_cert

    say = progress or (lambda _m: None)
    streams = 4 if quick else 16
    chunks = 200 if quick else 2500
    bulk_chunks = 20 if quick else 200
    open_streams = 100 if quick else 1000
    samples = 20 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        cert = make_cert(Path(tmp))
        adapters = {
            "echo": f"builtin:echo?chunks={chunks}",
            # the same PARTIALs from a 200-byte prompt: no 500 KB SYN per stream
            "echo_short": f"builtin:echo?chunks={chunks}&repeat={chunks}",
            "bulk": f"builtin:echo?chunks={bulk_chunks}",
            "slow": "builtin:persona?latency_ms=1000&chunks=100",
        }
        say("starting the router (atp serve --quic)")
        argv = ("--quic", "127.0.0.1:0", "--quic-cert", cert.cert, "--quic-key", cert.key)
        with _quic_router(adapters, argv) as router:
            url = router.proc.quic_url  # the port the kernel picked, from its log
            pid = router.proc.pid
            say("router: 200-byte frames")
            small = trio.run(_router_rate, url, cert.cert, FRAME, streams, chunks, pid)
            fps = small["frames_per_s"]
            say("router: 200-byte frames from a 200-byte prompt")
            short = trio.run(_lean_stream_rate, url, cert.cert, FRAME, streams, "echo_short", pid)
            say("router: 16 KiB payloads")
            bulk_url_rate = trio.run(_bulk_rate, url, cert.cert, streams, bulk_chunks, pid)
            say(f"router: SYN -> first PARTIAL with {open_streams} streams open")
            latency = trio.run(_latency_with_open_streams, url, cert.cert, open_streams, samples)
            say("router: a stalled stream beside quick ones")
            slow = trio.run(_slow_stream, url, cert.cert, 10 if quick else 50)
        n_small = 2000 if quick else 20000
        n_bulk = 50 if quick else 400
        say("baseline: aioquic echo, defaults")
        default = _baseline(cert.cert, cert.key, 0, FRAME, streams, n_small // streams)
        default_bulk = _baseline(cert.cert, cert.key, 0, BULK, streams, n_bulk // streams)
        say("baseline: aioquic echo, tuned (8,000-byte datagrams)")
        tuned = _baseline(cert.cert, cert.key, 8000, FRAME, streams, n_small // streams)
        tuned_bulk = _baseline(cert.cert, cert.key, 8000, BULK, streams, n_bulk // streams)
    default_fps, tuned_fps = default["rate"], tuned["rate"]
    mbps = bulk_url_rate / 1e6
    results = {
        "router": {"frames_per_s": fps, "bulk_mb_per_s": mbps},
        # information, not a goal: the same PARTIALs without the SYN carrying the answer's
        # size (the echo adapter answers its prompt, so above each stream's SYN is 500 KB)
        "router_short_prompt": {
            "frames_per_s": short["frames_per_s"],
            "vs_tuned": short["frames_per_s"] / tuned["rate"],
            "router_cpu_us": short["router_cpu_us"],
            "client_cpu_us": short["client_cpu_us"],
        },
        "baseline_default": {
            "msgs_per_s": default_fps,
            "bulk_mb_per_s": default_bulk["rate"] * BULK / 1e6,
        },
        "baseline_tuned": {
            "msgs_per_s": tuned_fps,
            "bulk_mb_per_s": tuned_bulk["rate"] * BULK / 1e6,
        },
        # CPU microseconds per 200 B frame / message of each end (0 where /proc is absent;
        # a quick run's figures are coarse: the kernel counts in 10 ms ticks)
        "cpu_us_per_frame": {
            "router": small["router_cpu_us"],
            "our_client": small["client_cpu_us"],
            "default_echo_server": default["server_cpu_us"],
            "default_echo_client": default["client_cpu_us"],
            "tuned_echo_server": tuned["server_cpu_us"],
            "tuned_echo_client": tuned["client_cpu_us"],
        },
        "latency_first_partial_ms": latency,
        "slow_stream": slow,
        # our client's UDP on the goal row; GSO / GRO are our transport's (Linux, where the
        # kernel has them): the aioquic echoes send and read one datagram per system call
        "our_client_udp": small["udp"],
    }
    goals = [
        Goal("router frames/s, 200 B PARTIALs over QUIC", fps, GOAL_FPS, "frames/s"),
        Goal("router MB/s, 16 KiB payloads over QUIC", mbps, GOAL_MBPS, "MB/s"),
        Goal("frames/s vs the default aioquic echo", fps / default_fps, GOAL_VS_DEFAULT, "x"),
        Goal("frames/s vs the tuned aioquic echo", fps / tuned_fps, GOAL_VS_TUNED, "x"),
        Goal(
            "quick streams beside a stalled one (latency ratio)",
            slow["ratio"],
            GOAL_SLOW_RATIO,
            "x",
            "<=",
        ),
    ]
    return _report.result(
        "quic",
        machine=_harness.machine_info(aioquic="aioquic", trio="trio"),
        settings={
            "streams": streams,
            "frame_bytes": FRAME,
            "bulk_bytes": BULK,
            "chunks_per_stream": chunks,
            "open_streams": open_streams,
        },
        results=results,
        goals=goals,
        quick=quick,
    )


async def _bulk_rate(url: str, ca: str, streams: int, chunks: int, router_pid: int) -> float:
    """Payload bytes/s of 16 KiB PARTIALs (the ``bulk`` adapter) over concurrent streams."""
    run = await _lean_stream_rate(url, ca, BULK * chunks, streams, "bulk", router_pid)
    return run["bytes_per_s"]


#: 1,000 long streams at once need more than admission's default AIMD limit and queue
_ADMISSION = "[admission]\ninitial_limit = 2048\nmax_limit = 4096\nmax_queue = 4096\n"


class _quic_router:
    """``atp serve --quic`` with the benchmark's adapters (the WebSocket port is free)."""

    def __init__(self, adapters: dict[str, str], argv: tuple[str, ...]) -> None:
        from atp_proto.testing.processes import RouterProcess

        self.proc = RouterProcess(
            "--no-auth",
            "--log-level",
            "info",
            *argv,
            metrics="off",
            adapters=adapters,
            config_toml=_ADMISSION,
            raise_nofile=True,
            keep_lines=40,
            timeout=30,
        )

    def __enter__(self) -> _quic_router:
        self.proc.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.__exit__(*exc)


def _cpu_cell(server: float, client: float) -> str:
    return f"{server:.1f} + {client:.1f}"


def _print(result: dict[str, Any]) -> None:
    console = _report.report_console()
    r = result["results"]
    cpu = r["cpu_us_per_frame"]
    rows = [
        [
            "router over QUIC (ours)",
            f"{r['router']['frames_per_s']:,.0f}",
            f"{r['router']['bulk_mb_per_s']:.1f}",
            _cpu_cell(cpu["router"], cpu["our_client"]),
        ],
        [
            "router over QUIC, 200 B prompt (ours; not a goal row)",
            f"{r['router_short_prompt']['frames_per_s']:,.0f}",
            "",
            _cpu_cell(
                r["router_short_prompt"]["router_cpu_us"],
                r["router_short_prompt"]["client_cpu_us"],
            ),
        ],
        [
            "aioquic echo, defaults",
            f"{r['baseline_default']['msgs_per_s']:,.0f}",
            f"{r['baseline_default']['bulk_mb_per_s']:.1f}",
            _cpu_cell(cpu["default_echo_server"], cpu["default_echo_client"]),
        ],
        [
            "aioquic echo, 8,000-byte datagrams",
            f"{r['baseline_tuned']['msgs_per_s']:,.0f}",
            f"{r['baseline_tuned']['bulk_mb_per_s']:.1f}",
            _cpu_cell(cpu["tuned_echo_server"], cpu["tuned_echo_client"]),
        ],
    ]
    lat = r["latency_first_partial_ms"]
    slow = r["slow_stream"]
    console.print(
        f"atp bench quic — {result['machine']['cpu_model']}, {result['date']}"
        + _report.quick_note(result),
        markup=False,
    )
    console.print(
        _report.markdown_table(
            ["what", "200 B frames/s", "16 KiB MB/s", "CPU µs per frame (server + client)"],
            rows,
            result,
        ),
        markup=False,
    )
    console.print(
        f"SYN -> first PARTIAL with {lat['open_streams']} streams open: p50 {lat['p50']:.2f} ms, "
        f"p99 {lat['p99']:.2f} ms; quick streams beside a stalled one: "
        f"{slow['beside_stalled_p50_ms']:.2f} ms vs {slow['alone_p50_ms']:.2f} ms alone",
        markup=False,
    )
    udp = r["our_client_udp"]
    offload = " + ".join(n for n in ("GSO", "GRO") if udp[n.lower()]) or "none"
    console.print(
        f"UDP offload of ours: {offload} (ours only: the aioquic echoes make one system call "
        f"per datagram); our client sent {udp['datagrams_sent']:,} datagrams in "
        f"{udp['send_calls']:,} calls, received {udp['datagrams_received']:,} in "
        f"{udp['receive_calls']:,} reads",
        markup=False,
    )


def run(args: argparse.Namespace) -> int:
    """``atp bench quic``: 1 when a full run misses a goal, else 0."""
    progress = None if args.json else (lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    result = run_benchmark(quick=args.quick, progress=progress)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return _report.exit_code(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_quic")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
