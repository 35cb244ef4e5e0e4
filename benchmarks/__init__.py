"""ATP's benchmarks, a top-level package installed beside ``atp_proto`` (``atp bench NAME``).

Each ``bench_NAME`` module measures one part against a baseline in the same run and exposes
``run(args) -> int``; ``_harness`` holds what they share to run (router process, forked
clients, machine counters, percentiles, machine info) and ``_report`` the goals and the JSON
result envelope. Run one as ``atp bench NAME [--quick] [--json]`` or, from a checkout,
``python -m benchmarks.bench_NAME``. Results and how they were measured: RESULTS.md.
"""
