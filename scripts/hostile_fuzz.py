#!/usr/bin/env python3
"""Long runs of the hostile peer (atp_proto/testing/hostile_*.py) against real routers.

    python scripts/hostile_fuzz.py --seconds 600 --seed 7                 # own fleet, ws and quic
    python scripts/hostile_fuzz.py --target quic --auth --seconds 300     # own fleet, JWT on
    python scripts/hostile_fuzz.py --target ws://127.0.0.1:7443/ws --token T   # a router you run

With ``--target ws`` / ``quic`` (or none: both, the time split between them) it starts its
own adapters and ``atp serve`` (``--auth``: HS256 JWT on) and applies every oracle,
the router's log, RSS and /proc counts included. With a URL it attacks that router
(``--pid`` and ``--metrics-port`` enable the RSS and open-session oracles). Prints a
summary; exits 1 when an oracle was violated, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atp_proto.testing import hostile_run as hr
from atp_proto.testing.hostile_cases import CASES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="run time (default 60)")
    p.add_argument("--seed", type=int, default=int(time.time()) & 0xFFFF)
    p.add_argument("--target", default="both", help="ws, quic, both, or ws://... / quic://...")
    p.add_argument("--auth", action="store_true", help="own fleet: JWT on")
    p.add_argument("--token", help="bearer token for --target URL")
    p.add_argument("--pid", type=int, help="the router's pid (--target URL)")
    p.add_argument("--metrics-port", type=int, help="the router's metrics port (--target URL)")
    p.add_argument("--workers", type=int, default=2, help="sessions at once (default 2)")
    p.add_argument("--cases", help="comma-separated case names (default all)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    if args.list:
        for c in CASES:
            print(f"{c.name:34} {','.join(c.kinds):8} weight {c.weight}")
        return 0
    only = set(args.cases.split(",")) if args.cases else None
    if only and (unknown := only - {c.name for c in CASES}):
        print(f"hostile_fuzz: unknown case {sorted(unknown)[0]!r} (see --list)", file=sys.stderr)
        return 2

    def progress(s: hr.Summary) -> None:
        print(f"  {s.cases} cases, {len(s.violations)} violations", file=sys.stderr, flush=True)

    summaries: list[hr.Summary] = []
    if "://" in args.target:
        kind = args.target.split("://", 1)[0]
        if kind not in ("ws", "quic"):
            print("hostile_fuzz: --target must be ws://... or quic://...", file=sys.stderr)
            return 2

        class _Log:
            def log(self) -> str:
                return ""

        fl = hr.Fleet(
            args.target if kind == "ws" else "",
            args.target if kind == "quic" else "",
            args.pid or 0,
            args.metrics_port,
            args.token,
            _Log(),
        )
        summaries.append(
            hr.run(
                fl,
                kind,
                seconds=args.seconds,
                seed=args.seed,
                only=only,
                progress=progress,
                workers=args.workers,
            )
        )
    else:
        kinds = ["ws", "quic"] if args.target == "both" else [args.target]
        if any(k not in ("ws", "quic") for k in kinds):
            print("hostile_fuzz: --target must be ws, quic, both or a URL", file=sys.stderr)
            return 2
        with hr.fleet(auth=args.auth, quic="quic" in kinds) as fl:
            summaries += [
                hr.run(
                    fl,
                    k,
                    seconds=args.seconds / len(kinds),
                    seed=args.seed,
                    only=only,
                    progress=progress,
                    workers=args.workers,
                )
                for k in kinds
            ]
    bad = 0
    for s in summaries:
        print("\n".join(s.lines()))
        print("  cases: " + ", ".join(f"{n} {c}" for c, n in sorted(s.by_case.items())))
        bad += len(s.violations)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
