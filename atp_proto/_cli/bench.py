"""``atp bench BENCHMARK``: run a benchmark from the repository's ``benchmarks/`` directory.

Benchmarks live beside the package in a source checkout (``benchmarks/bench_*.py``), not
inside it, so they are loaded by path. Each benchmark module exposes
``run(args: argparse.Namespace) -> int`` (0: every goal met, or a ``--quick`` run, which
is not judged; 1: a goal of a full run missed; see ``benchmarks/_report.py``) and receives
the options registered here. To add one, add an entry to :data:`BENCHMARKS`
(and, if it needs more than ``--json`` / ``--quick``, an options function).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from atp_proto.cli import UsageError


class Benchmark(NamedTuple):
    file: str  #: module file inside benchmarks/
    help: str
    options: Callable[[argparse.ArgumentParser], None] | None = None  #: extra arguments


#: benchmark name -> where it lives and what it measures
BENCHMARKS: dict[str, Benchmark] = {
    "codec": Benchmark(
        "bench_codec.py",
        "frame codec: encode / decode / round-trip per frame, beside json and cbor2",
    ),
    "adapters": Benchmark(
        "bench_adapters.py",
        "gRPC adapter plane: streaming chunks/s and Estimate latency, beside grpclib and grpcio",
    ),
    "ws": Benchmark(
        "bench_ws.py",
        "router over WebSocket: relayed PARTIAL frames/s, SYN->first PARTIAL latency, "
        "idle-session RSS, beside a bare trio-websocket echo",
    ),
}


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` directory (next to the ``atp_proto`` package)."""
    import atp_proto

    return Path(atp_proto.__file__).resolve().parents[1] / "benchmarks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(_bench_parser=parser)
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, bench in BENCHMARKS.items():
        p = sub.add_parser(name, help=bench.help, description=bench.help)
        p.add_argument(
            "--json",
            action="store_true",
            help="print one machine-readable JSON object on stdout, nothing else",
        )
        p.add_argument(
            "--quick",
            action="store_true",
            help="short runs (smoke test; numbers are rough, goals are reported, not judged)",
        )
        if bench.options is not None:
            bench.options(p)
        p.set_defaults(_bench=name)


def load(name: str) -> ModuleType:
    """Import benchmark ``name`` from ``benchmarks/`` by path.

    Raises:
        UsageError: the benchmarks directory or the module is not there (installed
            package without a source checkout).
    """
    directory = benchmarks_dir()
    path = directory / BENCHMARKS[name].file
    if not directory.is_dir():
        raise UsageError(
            f"no benchmarks directory at {directory}; benchmarks run from a source checkout "
            "of ATP (pip install -e .)"
        )
    if not path.is_file():
        raise UsageError(f"benchmark '{name}' is missing: {path} does not exist")
    module_name = f"_atp_benchmarks.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load benchmark '{name}' from {path}")
    module = importlib.util.module_from_spec(spec)
    # Benchmarks import their shared modules (_harness, _report) as siblings, as they do
    # when run as scripts (python benchmarks/bench_X.py).
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "_bench", None)
    if name is None:
        args._bench_parser.print_help(sys.stderr)
        return 2
    module = load(name)
    result: int = module.run(args)
    return result
