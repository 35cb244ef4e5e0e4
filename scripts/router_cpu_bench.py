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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--profile", metavar="FILE", help="cProfile the router into FILE")
    p.add_argument("--tree", metavar="DIR", help="first on the router's PYTHONPATH")
    p.add_argument("--top", type=int, default=40, help="functions to print with --profile")
    args = p.parse_args()
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
