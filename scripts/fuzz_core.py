#!/usr/bin/env python3
"""Random conversations between a client and a router core, hostile frames mixed in, by
the thousand: the invariants of atp_proto/testing/interleavings.py at every step.

    .venv/bin/python scripts/fuzz_core.py [SECONDS] [FIRST_SEED]    (default 60 s, seed 0)

Seeds are tried in order, each over the three bindings (WebSocket messages, a cut byte
stream, QUIC channels). The first violation prints its seed, binding and the last frames
delivered, and exits 1; ``conversation(random.Random(SEED), BINDING)`` replays it.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atp_proto.testing.interleavings import conversation


def main(argv: list[str]) -> int:
    try:
        seconds = float(argv[0]) if argv else 60.0
        seed = int(argv[1]) if len(argv) > 1 else 0
    except ValueError:
        print("usage: fuzz_core.py [SECONDS] [FIRST_SEED]", file=sys.stderr)
        return 2
    first, deadline, runs = seed, time.monotonic() + seconds, 0
    cpu = time.process_time()
    while time.monotonic() < deadline:
        for binding in ("ws", "bytes", "quic"):
            trace: list[str] = []
            try:
                conversation(random.Random(seed), binding, trace)
            except AssertionError as exc:
                print(f"fuzz_core: seed {seed} over {binding}: {exc}")
                print("\n".join(line[:400] for line in trace[-12:]))
                return 1
            runs += 1
        seed += 1
    print(
        f"fuzz_core: {runs} conversations (seeds {first}..{seed - 1}, three bindings) in "
        f"{seconds:g} s ({time.process_time() - cpu:.0f} s CPU): no finding"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
