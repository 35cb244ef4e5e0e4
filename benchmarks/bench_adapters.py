"""Adapter-plane benchmark: our trio gRPC client against grpclib's and grpcio's clients,
all calling the same SDK adapter process (grpclib server, reference ``echo`` adapter with
``chunks=1000``) in the same run.

Measured per client:
  * streaming: Stream calls of 1000 one-character chunks, one after another -> chunks/s
  * unary: Estimate calls one after another -> calls/s, p50 and p99 latency

The clients take turns: several rounds, each running every client once (a fresh
connection, a warm-up, then the measured calls), so drift on a shared machine falls on
all of them alike. Streaming figures are the median over rounds; Estimate latencies are
pooled over rounds.

Clients:
  * ``atp-trio``        atp_proto.adapters.grpc.GrpcAdapter (h2 on trio)
  * ``grpclib``         grpclib's asyncio client, messages decoded with the same fast codec
                        as ours (so the comparison is transport against transport)
  * ``grpclib+bp``      grpclib with the betterproto-generated stub (what a Python user of
                        the generated code gets; informational)
  * ``grpcio-aio``      grpcio's asyncio client (C core), same fast codec

Goals: atp-trio >= 1.2x grpclib on streaming chunks/s; atp-trio Estimate p50 <= 1 ms. A
full run exits 1 when one is missed; ``--quick`` reports them, not judged, and exits 0.

    atp bench adapters [--json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _harness, _report
from ._harness import _pct
from ._report import Goal, judge

STREAM_CHUNKS = 1000
PROMPT = "x" * STREAM_CHUNKS
GOAL_VS_GRPCLIB = 1.2  #: atp-trio streaming chunks/s over grpclib's
GOAL_P50_MS = 1.0  #: atp-trio Estimate p50


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print only JSON")
    p.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(rounds, stream calls, estimate calls) per client and round."""
    return (1, 3, 300) if quick else (5, 20, 600)


class Sample:
    """One round of one client: streaming rate and each Estimate call's latency."""

    def __init__(self, chunks: int, stream_s: float, lat: list[float]) -> None:
        self.chunks_per_s = chunks / stream_s
        self.lat = lat


def _summary(samples: list[Sample]) -> dict[str, float]:
    lat = [x for s in samples for x in s.lat]
    rates = [s.chunks_per_s for s in samples]
    return {
        "stream_chunks_per_s": statistics.median(rates),
        "stream_chunks_per_s_min": min(rates),
        "stream_chunks_per_s_max": max(rates),
        "estimate_calls_per_s": len(lat) / sum(lat),
        "estimate_p50_ms": _pct(lat, 0.50) * 1000,
        "estimate_p99_ms": _pct(lat, 0.99) * 1000,
        "estimate_mean_ms": statistics.fmean(lat) * 1000,
    }


# ------------------------------------------------------------------------------ clients


def bench_ours(port: int, n_stream: int, n_est: int) -> Sample:
    import trio

    from atp_proto.adapters import TaskRequest
    from atp_proto.adapters.grpc import GrpcAdapter

    async def main() -> Sample:
        req = TaskRequest("bench", PROMPT)
        async with GrpcAdapter("bench", "127.0.0.1", port) as a:
            for _ in range(50):
                await a.estimate(req)
            async for _ in a.stream(req):
                pass
            chunks = 0
            t0 = time.perf_counter()
            for _ in range(n_stream):
                async for _ in a.stream(req):
                    chunks += 1
            stream_s = time.perf_counter() - t0
            lat = []
            for _ in range(n_est):
                t = time.perf_counter()
                await a.estimate(req)
                lat.append(time.perf_counter() - t)
        assert chunks == n_stream * STREAM_CHUNKS, chunks
        return Sample(chunks, stream_s, lat)

    return trio.run(main)


def _bench_asyncio(
    stream_once: Callable[[], Awaitable[int]],
    estimate_once: Callable[[], Awaitable[Any]],
    n_stream: int,
    n_est: int,
    close: Callable[[], Awaitable[None]],
) -> Sample:
    """Warm up, then ``n_stream`` Stream calls one after another and ``n_est`` Estimate
    calls timed one by one, on asyncio (the grpclib and grpcio clients)."""

    async def main() -> Sample:
        for _ in range(50):
            await estimate_once()
        await stream_once()
        chunks = 0
        t0 = time.perf_counter()
        for _ in range(n_stream):
            chunks += await stream_once()
        stream_s = time.perf_counter() - t0
        lat = []
        for _ in range(n_est):
            t = time.perf_counter()
            await estimate_once()
            lat.append(time.perf_counter() - t)
        await close()
        assert chunks == n_stream * STREAM_CHUNKS, chunks
        return Sample(chunks, stream_s, lat)

    return asyncio.run(main())


def bench_grpclib(port: int, n_stream: int, n_est: int) -> Sample:
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    from atp_proto.adapters import TaskRequest
    from atp_proto.adapters.grpc.server import RawCodec
    from atp_proto.adapters.grpc.status import method_path
    from atp_proto.adapters.proto import codec

    payload = codec.encode_task_request(TaskRequest("bench", PROMPT))
    channel: Channel | None = None

    def ch() -> Channel:
        nonlocal channel
        if channel is None:
            channel = Channel("127.0.0.1", port, codec=RawCodec())
        return channel

    async def stream_once() -> int:
        n = 0
        async with ch().request(method_path("Stream"), Cardinality.UNARY_STREAM, bytes, bytes) as s:
            await s.send_message(payload, end=True)
            async for msg in s:
                codec.decode_chunk(msg)
                n += 1
        return n

    async def estimate_once() -> Any:
        async with ch().request(
            method_path("Estimate"), Cardinality.UNARY_UNARY, bytes, bytes
        ) as s:
            await s.send_message(payload, end=True)
            return codec.decode_estimate(await s.recv_message() or b"")

    async def close() -> None:
        if channel is not None:
            channel.close()

    return _bench_asyncio(stream_once, estimate_once, n_stream, n_est, close)


def bench_grpclib_betterproto(port: int, n_stream: int, n_est: int) -> Sample:
    from grpclib.client import Channel

    import atp_proto.adapters.proto.atp.adapter.v1 as pb

    task = pb.Task(task_type="bench", prompt=PROMPT)
    channel: Channel | None = None

    def stub() -> pb.AdapterServiceStub:
        nonlocal channel
        if channel is None:
            channel = Channel("127.0.0.1", port)
        return pb.AdapterServiceStub(channel)

    async def stream_once() -> int:
        n = 0
        async for _ in stub().stream(pb.StreamRequest(task=task)):
            n += 1
        return n

    async def estimate_once() -> Any:
        return await stub().estimate(pb.EstimateRequest(task=task))

    async def close() -> None:
        if channel is not None:
            channel.close()

    return _bench_asyncio(stream_once, estimate_once, n_stream, n_est, close)


def bench_grpcio(port: int, n_stream: int, n_est: int) -> Sample:
    import grpc

    from atp_proto.adapters import TaskRequest
    from atp_proto.adapters.grpc.status import method_path
    from atp_proto.adapters.proto import codec

    payload = codec.encode_task_request(TaskRequest("bench", PROMPT))
    holder: dict[str, Any] = {}

    def ch() -> Any:
        if "ch" not in holder:
            c = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            holder["ch"] = c
            holder["stream"] = c.unary_stream(
                method_path("Stream"),
                request_serializer=None,
                response_deserializer=codec.decode_chunk,
            )
            holder["est"] = c.unary_unary(
                method_path("Estimate"),
                request_serializer=None,
                response_deserializer=codec.decode_estimate,
            )
        return holder

    async def stream_once() -> int:
        n = 0
        async for _ in ch()["stream"](payload):
            n += 1
        return n

    async def estimate_once() -> Any:
        return await ch()["est"](payload)

    async def close() -> None:
        if "ch" in holder:
            await holder["ch"].close()

    return _bench_asyncio(stream_once, estimate_once, n_stream, n_est, close)


CLIENTS: dict[str, Callable[[int, int, int], Sample]] = {
    "atp-trio": bench_ours,
    "grpclib": bench_grpclib,
    "grpclib+bp": bench_grpclib_betterproto,
    "grpcio-aio": bench_grpcio,
}


# ------------------------------------------------------------------------------ running


def machine_info() -> dict[str, Any]:
    return _harness.machine_info(h2="h2", grpclib="grpclib", grpcio="grpcio", trio="trio")


def run(args: argparse.Namespace) -> int:
    rounds, n_stream, n_est = _sizes(args.quick)
    samples: dict[str, list[Sample]] = {name: [] for name in CLIENTS}
    progress = None
    if not args.json:
        from rich.console import Console

        progress = Console(stderr=True)
    from atp_proto.testing.processes import adapter_server

    with adapter_server(f"echo?chunks={STREAM_CHUNKS}", "--log-level", "warning") as url:
        port = int(url.rsplit(":", 1)[1])
        for i in range(rounds):
            for name, fn in CLIENTS.items():
                if progress:
                    progress.print(f"[dim]round {i + 1}/{rounds}: {name} ...[/dim]")
                # one server for all: each client warms up first, and the rounds
                # interleave the clients, so all run in the same conditions
                samples[name].append(fn(port, n_stream, n_est))
    results = {name: _summary(s) for name, s in samples.items()}
    ours, base = results["atp-trio"], results["grpclib"]
    ratio = ours["stream_chunks_per_s"] / base["stream_chunks_per_s"]
    goals = [
        Goal("atp-trio streaming chunks/s vs grpclib", round(ratio, 3), GOAL_VS_GRPCLIB, "x"),
        Goal("atp-trio Estimate p50", round(ours["estimate_p50_ms"], 3), GOAL_P50_MS, "ms", "<="),
    ]
    report = {
        "benchmark": "adapters",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "params": {
            "rounds": rounds,
            "stream_calls_per_round": n_stream,
            "chunks_per_stream": STREAM_CHUNKS,
            "estimate_calls_per_round": n_est,
        },
        "results": {k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()},
        **judge(goals, quick=args.quick),
    }
    report["params"]["quick"] = args.quick
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return _report.exit_code(report)
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Adapter gRPC clients vs one SDK adapter (echo, {STREAM_CHUNKS} chunks/stream)"
        + _report.quick_note(report)
    )
    cols = ("client", "stream chunks/s (median)", "min–max", "Estimate calls/s", "p50 ms", "p99 ms")
    for col in cols:
        table.add_column(col, justify="right" if col != "client" else "left")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['stream_chunks_per_s']:,.0f}",
            f"{r['stream_chunks_per_s_min']:,.0f}–{r['stream_chunks_per_s_max']:,.0f}",
            f"{r['estimate_calls_per_s']:,.0f}",
            f"{r['estimate_p50_ms']:.3f}",
            f"{r['estimate_p99_ms']:.3f}",
        )
    console = _report.report_console()
    console.print(table)
    _report.print_summary(console, _report.summary_lines(report))
    return _report.exit_code(report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
