"""What every benchmark shares to run: the machine it ran on, installed versions.

Imported as a sibling module (``import _harness``): ``atp bench`` puts this directory on
``sys.path`` when it loads a benchmark, and ``python benchmarks/bench_X.py`` has it there
already. Benchmarks never import the private CLI modules (``atp_proto._cli``).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


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
