"""The gRPC client's cost of taking a call's response, measured (benchmarks/RESULTS.md,
"The gRPC response fast path"). Measurement only; not part of the package.

``replay``: a real persona adapter process (``atp adapter serve persona``, grpclib)
answers ``--calls`` sequential calls on one connection of the real client, every byte
the reader gets is recorded, then replayed into fresh ``H2Channel`` s: per call the
request (``send_request``, not timed), the response's bytes through ``feed`` and
``Call.close()`` (timed: CPU time of this process). ``--count`` prints the function
calls (Python and C) per call's response instead; ``--profile`` a cProfile of it.

``client``: in-process client CPU per stream: ``GrpcAdapter.stream`` (4 chunks),
``--concurrency`` at once, against a real persona process.

A/B against another tree: run it with that tree first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

from atp_proto.adapters import TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter, _h2
from atp_proto.adapters.grpc._call import Call
from atp_proto.adapters.grpc._h2 import H2Channel
from atp_proto.adapters.grpc._h2_fastpath import Connection
from atp_proto.testing.h2_channel import detached_channel
from atp_proto.testing.processes import adapter_argv

Step = tuple[list[bytes], int, list[tuple[bytes, bytes]], bytes]  # reads before, request


def _persona() -> tuple[subprocess.Popen[bytes], int]:
    options = {"latency_ms": "0", "chunks": "4"}
    argv = adapter_argv("persona", "--grace", "0.5", options=options, name="p1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    m = re.search(rb"listening on [^\s]*:(\d+)", proc.stdout.readline())
    if m is None:
        proc.terminate()
        raise SystemExit("error: the persona adapter did not start")
    return proc, int(m.group(1))


async def _record(calls: int) -> tuple[list[Step], list[bytes]]:
    reads: list[bytes] = []
    sends: list[tuple[int, list[tuple[bytes, bytes]], bytes, int]] = []
    feed, send = _h2.feed, Connection.send_request

    def rec_feed(ch: H2Channel, data: bytes) -> bytes:
        reads.append(bytes(data))
        return feed(ch, data)

    def rec_send(self: Connection, sid: int, headers: Any, data: bytes) -> bool:
        sends.append((sid, list(headers), data, len(reads)))
        return send(self, sid, headers, data)

    proc, port = _persona()
    _h2.feed = rec_feed  # type: ignore[assignment]
    Connection.send_request = rec_send  # type: ignore[method-assign]
    try:
        async with GrpcAdapter("p1", "127.0.0.1", port) as a:
            for i in range(calls):
                async for _ in a.stream(TaskRequest("t", f"The quick brown fox {i}")):
                    pass
    finally:
        _h2.feed = feed
        Connection.send_request = send  # type: ignore[method-assign]
        proc.terminate()
    steps: list[Step] = []
    at = 0
    for sid, headers, data, upto in sends:
        steps.append((reads[at:upto], sid, headers, data))
        at = upto
    return steps, reads[at:]


def _replay(steps: list[Step], tail: list[bytes], clock: Callable[[], float]) -> float:
    """Seconds of ``clock`` spent on the responses, per call."""
    ch = detached_channel("bench", b"127.0.0.1")
    total = 0.0
    prev: Call | None = None
    for reads, sid, headers, data in steps:
        t0 = clock()
        for d in reads:
            _h2.feed(ch, d)
        if prev is not None:
            prev.close()
        total += clock() - t0
        assert ch.h2.send_request(sid, headers, data)
        prev = ch.calls[sid] = Call(ch, sid)
        ch.h2.data_to_send()
    t0 = clock()
    for d in tail:
        _h2.feed(ch, d)
    if prev is not None:
        prev.close()
    total += clock() - t0
    return total / len(steps)


def replay(args: argparse.Namespace) -> None:
    steps, tail = trio.run(_record, args.calls)
    if args.count:
        n = [0]
        on = [False]

        def prof(frame: Any, event: str, arg: Any) -> None:
            if event in ("call", "c_call"):
                n[0] += 1

        def toggle() -> float:  # on at each timed section's start, off at its end
            on[0] = not on[0]
            sys.setprofile(prof if on[0] else None)
            return 0.0

        _replay(steps, tail, toggle)
        sys.setprofile(None)
        print(f"{n[0] / len(steps):.1f} function calls per call's response")
        return
    if args.profile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.runcall(_replay, steps, tail, time.process_time)
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
        return
    t = sorted(_replay(steps, tail, time.process_time) * 1e6 for _ in range(args.rounds))
    print(f"response of one call: median {t[len(t) // 2]:.1f} µs CPU ({args.rounds} replays)")


async def _client(streams: int, concurrency: int) -> float:
    proc, port = _persona()
    try:
        async with GrpcAdapter("p1", "127.0.0.1", port) as a:

            async def one(i: int) -> None:
                n = 0
                async for _ in a.stream(TaskRequest("t", f"The quick brown fox {i}")):
                    n += 1
                assert n == 4, n

            for i in range(200):  # warm-up
                await one(i)
            left = [streams]

            async def worker() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await one(left[0])

            t0 = time.process_time()
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(worker)
            return (time.process_time() - t0) / streams
    finally:
        proc.terminate()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("replay", help="recorded persona responses replayed into the client")
    r.add_argument("--calls", type=int, default=2000)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--count", action="store_true", help="function calls per response")
    r.add_argument("--profile", action="store_true")
    c = sub.add_parser("client", help="in-process client CPU per stream")
    c.add_argument("--streams", type=int, default=3000)
    c.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    if args.mode == "replay":
        replay(args)
    else:
        per = trio.run(_client, args.streams, args.concurrency)
        print(f"{per * 1e6:.1f} µs client CPU per stream ({args.streams} streams)")


if __name__ == "__main__":
    main()
