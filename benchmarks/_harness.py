"""What every benchmark shares to run: the router process, forked client processes, the
machine's counters (CPU ticks, RSS, file limit), percentiles, and the machine it ran on.

Benchmarks import it from their package (``from . import _harness``) and never import the
private CLI modules (``atp_proto._cli``). The process helpers build on the public
:mod:`atp_proto.testing`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from atp_proto import testing


def version(dist: str) -> str:
    """Installed version of a distribution, or "unknown"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def machine_info(**versions: str) -> dict[str, Any]:
    """The machine a benchmark ran on, for its JSON and RESULTS.md; ``versions`` maps an
    output key to a distribution name (``trio_websocket="trio-websocket"``)."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
    }
    info.update({key: version(dist) for key, dist in versions.items()})
    info["atp_proto"] = version("atp-proto")
    return info


# ------------------------------------------------------------------------------ processes


class RouterProcess(testing.RouterProcess):
    """``atp serve`` as the benchmarks run it: no auth, loopback WebSocket on a free port, no
    metrics listener, room for 20,000 sessions, RLIMIT_NOFILE raised, a 1 s drain grace; the
    last 40 log lines kept for the error message (:class:`atp_proto.testing.RouterProcess`)."""

    def __init__(self, adapters: Mapping[str, str], config_toml: str | None = None) -> None:
        super().__init__(
            "--no-auth",
            "--max-sessions",
            "20000",
            "--log-level",
            "info",
            "--grace",
            "1",
            metrics="off",
            adapters=adapters,
            config_toml=config_toml,
            raise_nofile=True,
            keep_lines=40,
            timeout=30,
        )


def _fork() -> Any:
    """The multiprocessing context client processes start from (fork: no re-import)."""
    return mp.get_context("fork")


def _raise_nofile() -> int:
    """Raise this process's RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _rss(pid: int) -> int:
    """Resident set size of a process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


# ------------------------------------------------------------------------------ statistics


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank, no interpolation) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _dist_ms(values_s: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean / max in milliseconds, and n, of durations in seconds."""
    ms = [v * 1000 for v in values_s]
    return {
        "p50": _pct(ms, 0.50),
        "p90": _pct(ms, 0.90),
        "p99": _pct(ms, 0.99),
        "mean": sum(ms) / len(ms),
        "max": max(ms),
        "n": len(ms),
    }
