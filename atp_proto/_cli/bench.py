"""``atp bench BENCHMARK``: run a benchmark from the ``benchmarks`` package.

Benchmarks live beside ``atp_proto`` as a second top-level package (``benchmarks/bench_*.py``),
installed with it by the wheel and importable from a source checkout (``pip install -e .``),
so ``atp bench`` works wherever ``atp`` does; they are imported by name. Each benchmark
module exposes ``run(args: argparse.Namespace) -> int`` (0: every goal met, or a ``--quick``
run, which is not judged; 1: a goal of a full run missed; see ``benchmarks/_report.py``) and
receives the options registered here. To add one, add an entry to :data:`BENCHMARKS`
(and, if it needs more than ``--json`` / ``--quick``, an options function). A module may
also expose ``check_options(args) -> str | None``: the one-line reason why the options
given together would not all act (one would be ignored), said as bad usage (exit 2)
before anything runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

from atp_proto.cli import UsageError

#: the package the benchmarks are imported from
PACKAGE = "benchmarks"


class Benchmark(NamedTuple):
    module: str  #: module inside the benchmarks package
    help: str
    options: Callable[[argparse.ArgumentParser], None] | None = None  #: extra arguments


#: benchmark name -> where it lives and what it measures
BENCHMARKS: dict[str, Benchmark] = {
    "codec": Benchmark(
        "bench_codec",
        "frame codec: encode / decode / round-trip per frame, beside json and cbor2",
    ),
    "adapters": Benchmark(
        "bench_adapters",
        "gRPC adapter plane: streaming chunks/s and Estimate latency, beside grpclib and grpcio",
    ),
    "ws": Benchmark(
        "bench_ws",
        "router over WebSocket: relayed PARTIAL frames/s, SYN->first PARTIAL latency, "
        "idle-session RSS, beside a bare trio-websocket echo",
    ),
    "policy": Benchmark(
        "bench_policy",
        "policy decide(): Rego bundle (regopy) and its cache, beside query() and claims only",
    ),
    "routing": Benchmark(
        "bench_routing",
        "learned routing on real outcome data through the real router: quality, cost, "
        "PGR/APGR/CPT beside always-strong/weak, random, oracle and RouteLLM's figures",
        lambda p: _options_of("bench_routing", p),
    ),
    "quic": Benchmark(
        "bench_quic",
        "router over QUIC: 200 B frames/s, 16 KiB MB/s, SYN->first PARTIAL with 1,000 "
        "streams open, a stalled stream beside quick ones, beside bare aioquic echoes",
    ),
    "e2e": Benchmark(
        "bench_e2e",
        "load through atp serve to gRPC persona adapters: streams/s, TTFP/FINAL percentiles "
        "per lane, router overhead beside direct gRPC, QoS isolation, slow readers, capacity",
        lambda p: _options_of("bench_e2e", p),
    ),
}


def _options_of(module: str, parser: argparse.ArgumentParser) -> None:
    """The benchmark module's own ``add_options(parser)``; none when the benchmarks package
    is not installed (every ``atp`` command builds this parser; running the benchmark then
    says it is missing, see :func:`load`)."""
    name = f"{PACKAGE}.{module}"
    try:
        found = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in (PACKAGE, name):
            raise
        return
    found.add_options(parser)


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
    """Import benchmark ``name`` (``benchmarks.bench_NAME``).

    Raises:
        UsageError: the ``benchmarks`` package or the module is not installed.
    """
    module_name = f"{PACKAGE}.{BENCHMARKS[name].module}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (PACKAGE, module_name):
            raise  # a dependency of the benchmark is missing: show it as it is
        raise UsageError(
            f"benchmark '{name}' is not installed: no module {module_name} "
            f"(install atp-proto with its benchmarks package, or pip install -e . in a checkout)"
        ) from None


#: options of some benchmarks (their ``add_options``) naming a file they read, checked
#: before the run: a missing one is bad usage (exit 2) in the words of every ``atp`` command
INPUT_FILES = {"data": "--data"}
#: ... and a directory they write: one that cannot be written is said before a run of
#: minutes, not after it (exit 2)
OUTPUT_DIRS = {"plot": "--plot"}


def check_paths(args: argparse.Namespace) -> None:
    """The :data:`INPUT_FILES` and :data:`OUTPUT_DIRS` a benchmark was given.

    Raises:
        UsageError: the first one that cannot be read or written.
    """
    from atp_proto._cli._files import input_file, output_dir

    for dest, flag in INPUT_FILES.items():
        if getattr(args, dest, None):
            input_file(getattr(args, dest), flag)
    for dest, flag in OUTPUT_DIRS.items():
        if getattr(args, dest, None):
            output_dir(getattr(args, dest), flag)


def run(args: argparse.Namespace) -> int:
    name = getattr(args, "_bench", None)
    if name is None:
        args._bench_parser.print_help(sys.stderr)
        return 2
    module = load(name)
    check = getattr(module, "check_options", None)  # options that would do nothing
    problem = check(args) if check is not None else None
    if problem:
        raise UsageError(problem)
    check_paths(args)
    result: int = module.run(args)
    return result
