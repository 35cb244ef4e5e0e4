"""What ``atp bench ws`` measures with: sizes of the full and quick runs, the goals."""

from __future__ import annotations

from dataclasses import dataclass

CHUNK = 200  #: characters per relayed chunk (the "200-byte frame")
WINDOW = 64  #: baseline messages in flight
PACE_MS = 100  #: background streams: one PARTIAL per stream every PACE_MS
STREAMS_PER_SESSION = 50  #: the router allows 100 concurrent streams per session
HANDSHAKES_IN_FLIGHT = 100
GIB = 1 << 30

GOAL_FPS = 100_000.0
GOAL_VS_BASELINE = 10.0
GOAL_VS_PICOWS = 1.0
GOAL_P50_MS = 0.5
GOAL_SESSIONS = 10_000
GOAL_RSS = GIB


@dataclass(frozen=True)
class Sizes:
    streams: int  #: throughput: concurrent streams
    frames: int  #: throughput: PARTIALs per stream (M)
    baseline_s: float
    background: int  #: latency: concurrent background streams
    probes: int
    sessions: int  #: idle sessions
    rounds: int  #: picows echo and relay runs, alternated


FULL = Sizes(
    streams=200,
    frames=1000,
    baseline_s=3.0,
    background=1000,
    probes=1000,
    sessions=10_000,
    rounds=3,
)
QUICK = Sizes(
    streams=20, frames=200, baseline_s=0.5, background=100, probes=100, sessions=1000, rounds=2
)
