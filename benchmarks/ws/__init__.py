"""The scenarios of ``atp bench ws`` (:mod:`benchmarks.bench_ws` runs and reports them):
settings, throughput, the trio-websocket baseline, latency under load, idle sessions, and
the table and Markdown output."""
