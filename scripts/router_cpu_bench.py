"""The router's own CPU per stream, measured (benchmarks/RESULTS.md, "The router's own
CPU per stream"). Measurement only; not part of the package.

A real ``atp serve`` process (WebSocket, no auth) routes to two real persona adapter
processes over gRPC (``latency_ms=0``, 4 chunks, ``max_age_ms=1000``: the preflight
reuses estimates, as ``atp bench e2e`` runs it); this process is a closed-loop client of
``--concurrency`` streams at a time on one session (``atp_proto.client``). After
``--warmup`` streams, the router's CPU time (``/proc/PID/stat``, utime + stime) over
``--streams`` streams is divided by the streams: CPU µs per stream. ``--profile FILE``
runs the router under cProfile (written when it exits) and prints the function calls
per stream of its hot functions; profiling inflates the CPU figure, so the two are
separate runs.

A/B against another tree: ``--tree DIR`` puts DIR first on the router's PYTHONPATH.

``--adapter-path``: the router's adapter-call path alone, in this process (the tree to
measure first on ``PYTHONPATH``): per stream the preflight's estimate-cache key
(``size_class``) and ``ResilientAdapter(GrpcAdapter).stream`` to the end (4 chunks,
``--concurrency`` at once, a real persona process); this process's CPU time per stream,
or with ``--profile FILE`` its function calls per stream.
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import trio

from atp_proto import client, testing
from atp_proto.testing.processes import clean_env

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._load import fleet

_TICK = os.sysconf("SC_CLK_TCK")

_SITE = """\
import atexit, cProfile, os
_p = cProfile.Profile()
_out = os.environ["ATP_RCPU_PROFILE"]
def _dump():
    _p.disable()
    _p.dump_stats(_out)
atexit.register(_dump)
_p.enable()
"""


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def _drive(url: str, warmup: int, streams: int, concurrency: int, pid: int) -> float:
    async with client.connect(url) as c:
        left = [warmup]

        async def one() -> None:
            while left[0] > 0:
                left[0] -= 1
                await c.ask("The quick brown fox jumps over the lazy dog", qos="gold")

        async def batch(n: int) -> None:
            left[0] = n
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(one)

        await batch(warmup)
        start = _cpu(pid)
        await batch(streams)
        return (_cpu(pid) - start) / streams


async def _adapter_path(url: str, warmup: int, streams: int, concurrency: int) -> float:
    from atp_proto.adapters import TaskRequest
    from atp_proto.adapters.grpc import GrpcAdapter
    from atp_proto.adapters.resilience import ResilientAdapter
    from atp_proto.router.routing.estimate_cache import size_class

    async with GrpcAdapter.from_url("p1", url) as inner:
        adapter = ResilientAdapter(inner)
        left = [0]

        async def one() -> None:
            while left[0] > 0:
                left[0] -= 1
                req = TaskRequest(
                    "t",
                    "The quick brown fox jumps over the lazy dog",
                    {"lang": "en"},
                    None,
                    {"qos": "gold", "client": "bench"},
                    f"s-{left[0]}",
                )
                size_class(req)
                async for chunk in adapter.stream(req):
                    if chunk.final:
                        break

        async def batch(n: int) -> None:
            left[0] = n
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(one)

        await batch(warmup)
        start = time.process_time()
        await batch(streams)
        return (time.process_time() - start) / streams


def adapter_path(args: argparse.Namespace) -> int:
    import cProfile

    opts = {"latency_ms": "0", "chunks": "4"}
    with fleet.adapters(1, opts) as ad:
        url = next(iter(ad.urls.values()))
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        us = 1e6 * trio.run(_adapter_path, url, args.warmup, args.streams, args.concurrency)
        if args.profile:
            prof.disable()
            prof.dump_stats(args.profile)
    print(
        f"adapter path CPU per stream: {us:.1f} µs ({args.streams} streams, load "
        f"{os.getloadavg()[0]:.1f}{', profiled' if args.profile else ''})"
    )
    if args.profile:
        st = pstats.Stats(args.profile)
        total = sum(v[1] for v in st.stats.values())  # type: ignore[attr-defined]
        n = args.streams + args.warmup
        print(f"function calls per stream (profile, warmup included): {total / n:.1f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--profile", metavar="FILE", help="cProfile the router into FILE")
    p.add_argument("--tree", metavar="DIR", help="first on the router's PYTHONPATH")
    p.add_argument("--top", type=int, default=40, help="functions to print with --profile")
    p.add_argument(
        "--adapter-path", action="store_true", help="the adapter-call path alone, in process"
    )
    args = p.parse_args()
    if args.adapter_path:
        return adapter_path(args)
    env = clean_env()
    path = [args.tree] if args.tree else []
    tmp = tempfile.TemporaryDirectory()
    if args.profile:
        Path(tmp.name, "sitecustomize.py").write_text(_SITE)
        path.append(tmp.name)
        env["ATP_RCPU_PROFILE"] = str(Path(args.profile).resolve())
    if path:
        env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")])
    opts = {"latency_ms": "0", "chunks": "4", "max_age_ms": "1000"}
    with fleet.adapters(2, opts) as ad:
        router = testing.RouterProcess(
            "--no-auth",
            "--log-level",
            "info",
            "--grace",
            "1",
            metrics="off",
            adapters=ad.urls,
            env=env,
            cwd=tmp.name,  # not this directory: `python -m` puts the cwd before PYTHONPATH
            keep_lines=40,
            timeout=60,
            with_parent=True,
        )
        try:
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            us = 1e6 * trio.run(
                _drive, router.url, args.warmup, args.streams, args.concurrency, router.pid
            )
            wall = time.perf_counter() - t0
        finally:
            router.stop()
    print(
        f"router CPU per stream: {us:.0f} µs ({args.streams} streams, "
        f"concurrency {args.concurrency}, {wall:.1f} s, load {load0:.1f})"
    )
    if args.profile:
        st = pstats.Stats(args.profile)
        n = args.streams + args.warmup
        total = sum(v[1] for v in st.stats.values())  # type: ignore[attr-defined]
        print(f"function calls per stream (profile, warmup included): {total / n:.0f}")
        st.sort_stats("tottime").print_stats(args.top)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
