"""The processes of an e2e run: gRPC persona adapters (``atp adapter serve persona``), one
``atp serve`` (WebSocket, and QUIC with ``--transport quic``; ``--workers N`` passed
through when this ``atp serve`` has the option), and a sampler of the router's CPU and RSS
(its whole process tree, so N workers are summed) read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atp_proto import testing
from atp_proto.testing.processes import adapter_argv, clean_env, die_with_parent

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Adapters:
    urls: dict[str, str]  #: name -> grpc://127.0.0.1:PORT
    pids: list[int]


@contextmanager
def adapters(
    count: int, options: Mapping[str, str], *, target: str = "persona", prefix: str = "p"
) -> Iterator[Adapters]:
    """``count`` adapter processes (``atp adapter serve TARGET``) named PREFIX1..PREFIXn,
    each with ``options``."""
    import re

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for k in range(1, count + 1):
            name = f"{prefix}{k}"
            argv = adapter_argv(target, "--grace", "0.5", options=options, name=name)
            procs[name] = subprocess.Popen(  # gone with the benchmark, even a SIGKILLed one
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=clean_env(),
                preexec_fn=die_with_parent(),  # noqa: PLW1509 (one prctl: takes no lock)
            )
        urls = {}
        for name, p in procs.items():
            assert p.stdout is not None
            line = p.stdout.readline()
            m = re.search(rb"listening on [^\s]*:(\d+)", line)
            if m is None:
                raise RuntimeError(f"adapter {name} did not start: {line!r}")
            urls[name] = f"grpc://127.0.0.1:{int(m.group(1))}"
        yield Adapters(urls, [p.pid for p in procs.values()])
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def serve_has_workers() -> bool:
    """Whether this ``atp serve`` takes ``--workers N`` (issue 14 item 5, another branch):
    asked of ``atp serve --help`` itself, so it holds whichever branch is installed."""
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "atp_proto", "serve", "--help"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        check=False,
    ).stdout
    return "--workers" in out


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Router:
    proc: testing.RouterProcess
    url: str  #: what the load workers connect to (ws://... or quic://...)
    ca_file: str | None


@contextmanager
def router(
    adapter_urls: Mapping[str, str],
    *,
    transport: str = "ws",
    admission: Mapping[str, Any] | None = None,
    workers: int = 1,
    metrics: bool = False,
) -> Iterator[Router]:
    """``atp serve`` as the benchmarks run it (no auth, room for 20,000 sessions,
    RLIMIT_NOFILE raised), with an ``[admission]`` section when given. ``metrics`` opens its
    Prometheus listener on an ephemeral loopback port (read with :func:`scrape`); without
    it there is none. The router records its series either way: the listener costs a run
    nothing until it is scraped."""
    args = ["--no-auth", "--max-sessions", "20000", "--log-level", "info", "--grace", "1"]
    if workers > 1:
        if not serve_has_workers():
            raise RuntimeError(
                "--workers needs `atp serve --workers N` (issue 14 item 5), "
                "which this installation does not have"
            )
        args += ["--workers", str(workers)]
    toml = None
    if admission:
        toml = "[admission]\n" + "".join(f"{k} = {v}\n" for k, v in admission.items())
    with ExitStack() as stack:
        ca: str | None = None
        quic_port = 0
        if transport == "quic":
            from atp_proto.testing.certs import make_cert

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            cert = make_cert(Path(tmp))
            quic_port = _free_udp_port()
            args += ["--quic", f"127.0.0.1:{quic_port}", "--quic-cert", cert.cert]
            args += ["--quic-key", cert.key]
            ca = cert.cert
        proc = testing.RouterProcess(
            *args,
            metrics="127.0.0.1:0" if metrics else "off",
            adapters=adapter_urls,
            config_toml=toml,
            env=clean_env(),
            raise_nofile=True,
            keep_lines=40,
            timeout=30,
            with_parent=True,  # gone with the benchmark, even a SIGKILLed one
        )
        stack.callback(proc.stop)
        url = f"quic://127.0.0.1:{quic_port}" if transport == "quic" else proc.url
        yield Router(proc, url, ca)


def scrape(
    port: int | None, name: str, *, timeout: float = 5.0
) -> list[tuple[dict[str, str], float]]:
    """The samples of the counter ``name`` on a router's metrics port (``/metrics``), as
    (labels, value) pairs; [] when there is no port or it does not answer (a benchmark
    reports what it could read, it does not fail for it)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    if port is None:
        return []
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def estimate_reuse(port: int | None) -> dict[str, Any]:
    """The router's preflight estimates by source, from ``atp_estimates_total{adapter,
    source=called|reused}`` (ATP-BUDGET-018): how many streams' estimates were reused
    instead of an ``Estimate`` call, summed over the adapters. ``reuse_rate`` is None when
    nothing was counted (no metrics port, or no preflight ran)."""
    rows = scrape(port, "atp_estimates_total")
    called = sum(v for labels, v in rows if labels.get("source") == "called")
    reused = sum(v for labels, v in rows if labels.get("source") == "reused")
    total = called + reused
    return {
        "called": int(called),
        "reused": int(reused),
        "reuse_rate": reused / total if total else None,
    }


# ---------------------------------------------------------------------- sampling


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            out += [int(c) for c in text.split()]
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``atp serve --workers N`` forks its workers)."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / _TICK


def runqueue_wait_s(pids: list[int]) -> float:
    """Seconds the processes were runnable but waiting for a CPU (``/proc/PID/schedstat``,
    field 2): on a shared host, the time other processes' load took from them."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    return total / 1e9


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


@dataclass
class Sampler:
    """Samples process trees' CPU (% of one core, summed) and RSS every ``interval``
    seconds in a thread, from ``start()`` to ``stop()``; ``samples`` are (t, cpu %, rss)."""

    pid: int | list[int]
    interval: float = 0.5
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def pids(self) -> list[int]:
        roots = self.pid if isinstance(self.pid, list) else [self.pid]
        return [p for root in roots for p in tree(root)]

    def start(self) -> Sampler:
        self.t0 = time.perf_counter()
        self.cpu0 = cpu_s(self.pids())
        self.wait0 = runqueue_wait_s(self.pids())
        self.rss0 = rss(self.pids())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        last_t, last_c = self.t0, self.cpu0
        while not self._stop.wait(self.interval):
            pids = self.pids()
            t, c = time.perf_counter(), cpu_s(pids)
            self.samples.append((t - self.t0, 100 * (c - last_c) / (t - last_t), rss(pids)))
            last_t, last_c = t, c

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        pids = self.pids()
        wall = time.perf_counter() - self.t0
        used = cpu_s(pids) - self.cpu0
        end_rss = rss(pids)
        peak = max([end_rss, self.rss0, *(s[2] for s in self.samples)])
        return {
            "processes": len(pids),
            "cpu_pct": 100 * used / wall if wall > 0 else 0.0,
            "cpu_s": used,
            # runnable but not running (a loaded host): % of the wall time, summed
            "runqueue_wait_pct": 100 * (runqueue_wait_s(pids) - self.wait0) / wall
            if wall > 0
            else 0.0,
            "rss_start_bytes": self.rss0,
            "rss_end_bytes": end_rss,
            "rss_peak_bytes": peak,
            "timeline": [
                {"t": round(t, 3), "cpu_pct": round(c, 1), "rss_bytes": r}
                for t, c, r in self.samples
            ],
        }
