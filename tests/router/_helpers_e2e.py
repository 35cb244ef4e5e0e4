"""Helpers for the end-to-end router tests (tests/router/test_e2e_*.py).

The raw frame codec, the HTTP GET and the process helpers live in :mod:`atp_proto.testing`
(shared with the benchmarks and the conformance suite); they are re-exported here under the
names the tests use. What is left is specific to this checkout: ``atp ARGS`` run from the
repository root, and :func:`router_process` with this suite's clean environment.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atp_proto.testing.frames import (
    F_ACK,
    F_CONT,
    F_FIN,
    F_HB,
    F_MORE,
    F_RST,
    F_SYN,
    HEADER,
    META,
    Q_BRONZE,
    Q_GOLD,
    Q_SILVER,
    T_BUDGET_UPDATE,
    T_CAPABILITIES,
    T_DATA,
    T_ERROR,
    T_WINDOW_UPDATE,
    WINDOW,
    RawFrame,
    build_frame,
    parse_frames,
    syn_frame,
)
from atp_proto.testing.http import http_get, metric_value
from atp_proto.testing.processes import RouterProcess, clean_env

__all__ = [
    "F_ACK",
    "F_CONT",
    "F_FIN",
    "F_HB",
    "F_MORE",
    "F_RST",
    "F_SYN",
    "HEADER",
    "META",
    "Q_BRONZE",
    "Q_GOLD",
    "Q_SILVER",
    "ROOT",
    "T_BUDGET_UPDATE",
    "T_CAPABILITIES",
    "T_DATA",
    "T_ERROR",
    "T_WINDOW_UPDATE",
    "WINDOW",
    "RawFrame",
    "RouterProcess",
    "atp",
    "build_frame",
    "clean_env",
    "http_get",
    "metric_value",
    "parse_frames",
    "router_process",
    "syn_frame",
]

ROOT = Path(__file__).resolve().parent.parent.parent


def atp(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m atp_proto ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "atp_proto", *args],
        cwd=ROOT,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def router_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 20
) -> Iterator[RouterProcess]:
    """``atp serve ARGS`` exactly (no port flags added) as a subprocess, from the repository
    root in a clean environment; ready once it logs "router listening"."""
    with RouterProcess(
        *args, ws=None, metrics=None, env=clean_env(env), cwd=ROOT, timeout=timeout
    ) as router:
        yield router


def frames_until_end(ws: Any, streams: set[int], timeout: float = 15) -> list[RawFrame]:
    """Binary frames read from a ``websockets`` sync client (an independent WebSocket
    implementation) until every stream in ``streams`` has ended (FIN or ERROR)."""
    import time

    frames: list[RawFrame] = []
    left = set(streams)
    deadline = time.monotonic() + timeout
    while left:
        msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        assert isinstance(msg, bytes), msg
        for f in parse_frames(msg):
            frames.append(f)
            if f.has(F_FIN) or f.type == T_ERROR:
                left.discard(f.stream_id)
    return frames
