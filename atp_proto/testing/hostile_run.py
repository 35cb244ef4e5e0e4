"""Run the hostile peer's cases against a router, and the run-wide oracles.

:func:`fleet` starts what a user runs: two ``atp adapter serve echo`` processes (``echo``,
fast; ``slow``, 150 ms a chunk, so that a stream stays open while a case attacks it) and
``atp serve`` with them, JWT on (HS256, a key file) or off, WebSocket and QUIC (a test
certificate). :func:`run` draws cases by weight from a seeded ``random.Random`` for a time
or a count, one session each (plus sessions that never say CAPABILITIES), and judges the
whole run: no traceback and no ERROR-level line in the router's log (what a hostile peer
sends is the peer's fault: a WARNING at most), RSS, threads, file descriptors and open
sessions/streams (``/metrics``, ``/proc``) bounded, and a clean client served at the end.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hostile_cases import CASES, Case
from .hostile_session import Session
from .hostile_wire import Closed

__all__ = ["Fleet", "Summary", "fleet", "proc_stats", "run"]

SECRET = "hostile-peer-secret-of-at-least-32-bytes!"
#: the fleet router's idle_timeout_ms: short enough for c_idle_session_closed to see it
#: (ATP-TIME-004), longer than any other case leaves a session without a stream
IDLE_MS = 6000


@dataclass
class Fleet:
    ws: str
    quic: str
    pid: int
    metrics_port: int | None
    token: str | None
    router: Any

    def target(self, kind: str) -> str:
        return self.ws if kind == "ws" else self.quic


def mint(secret: str, ttl_s: int = 7200) -> str:
    """An HS256 token made with PyJWT directly (the peer's own, not the router's helper)."""
    import jwt

    now = int(time.time())
    return jwt.encode(
        {"sub": "hostile", "tenant": "t1", "iat": now, "exp": now + ttl_s},
        secret,
        algorithm="HS256",
    )


@contextlib.contextmanager
def fleet(*, auth: bool = False, quic: bool = True, extra: tuple[str, ...] = ()) -> Iterator[Fleet]:
    """Adapters and a router as real processes on loopback (module docstring)."""
    from .certs import make_cert
    from .processes import RouterProcess, adapter_server, clean_env

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="atp-hostile-"))
        urls = {
            "echo": stack.enter_context(adapter_server("echo")),
            "slow": stack.enter_context(
                adapter_server("echo", options={"latency_ms": "150", "chunks": "4"})
            ),
            "big": stack.enter_context(
                adapter_server("echo", options={"repeat": "2000", "chunks": "20"})
            ),
            "dead": f"grpc://127.0.0.1:{_refused_port(stack)}",
            "flaky": stack.enter_context(  # dies mid-stream after two chunks
                adapter_server("echo", options={"chunks": "4", "fail": "cut", "fail_after": "2"})
            ),
            "stall": stack.enter_context(  # hangs after its first chunk
                adapter_server("echo", options={"chunks": "4", "fail": "stall", "fail_after": "1"})
            ),
            "hold": stack.enter_context(
                adapter_server("echo", options={"latency_ms": "400", "chunks": "40"})
            ),
        }
        args: list[str] = []
        token = None
        if auth:
            key = Path(tmp) / "hs.key"
            key.write_text(SECRET)
            args += ["--jwt-key-file", str(key)]
            token = mint(SECRET)
        else:
            args.append("--no-auth")
        if quic:
            cert = make_cert(Path(tmp))
            args += ["--quic", "127.0.0.1:0", "--quic-cert", cert.cert, "--quic-key", cert.key]
        with RouterProcess(
            *args,
            *extra,
            adapters=urls,
            env=clean_env(),
            keep_lines=20000,
            config_toml=f"[limits]\nidle_timeout_ms = {IDLE_MS}\n",
        ) as r:
            yield Fleet(r.ws_url, r.quic_url, r.pid, r.metrics_port, token, r)


def _refused_port(stack: contextlib.ExitStack) -> int:
    """A loopback port bound but not listening (connections are refused) while ``stack``
    lives: the address of an adapter that is down."""
    sock = stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", 0))
    return int(sock.getsockname()[1])


def proc_stats(pid: int) -> dict[str, int]:
    """RSS (kB), threads and open file descriptors of ``pid``, from /proc (no psutil)."""
    out = {"rss_kb": 0, "threads": 0, "fds": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return out


def metrics(port: int | None) -> dict[str, float]:
    """Open sessions and streams from the router's /metrics."""
    if port is None:
        return {}
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {"sessions": 0.0, "streams": 0.0}
    for line in text.splitlines():
        if line.startswith("atp_sessions_active"):
            out["sessions"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("atp_streams_active"):
            out["streams"] += float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class Summary:
    target: str
    seed: int
    cases: int = 0
    sessions: int = 0
    by_case: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    start: dict[str, int] = field(default_factory=dict)
    end: dict[str, int] = field(default_factory=dict)
    peak_rss_kb: int = 0
    metrics_end: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"target {self.target} seed {self.seed}: {self.cases} cases, {self.sessions} sessions "
            f"in {self.seconds:.0f} s, {len(self.violations)} violations",
            f"router RSS {self.start.get('rss_kb', 0) // 1024} MB -> "
            f"{self.end.get('rss_kb', 0) // 1024} MB (peak {self.peak_rss_kb // 1024} MB), "
            f"threads {self.start.get('threads')} -> "
            f"{self.end.get('threads')}, fds {self.start.get('fds')} -> {self.end.get('fds')}, "
            f"open sessions/streams at the end {self.metrics_end}",
        ]
        seen: Counter[str] = Counter(v.split(" [")[0] for v in self.violations)
        example = {v.split(" [")[0]: v for v in self.violations}
        out += [f"  VIOLATION x{n}: {example[v]}" for v, n in seen.most_common(40)]
        return out


def _pick(rng: random.Random, kind: str, only: set[str] | None) -> Case:
    pool = [c for c in CASES if kind in c.kinds and (only is None or c.name in only)]
    return rng.choices(pool, weights=[c.weight for c in pool])[0]


def run_one(fl: Fleet, kind: str, c: Case, rng: random.Random) -> list[str]:
    """One case on a fresh session: its violations, tagged with the case's name."""
    try:
        s = Session(fl.target(kind), token=fl.token, caps=kind == "quic" or rng.random() < 0.85)
    except (Closed, OSError, TimeoutError) as e:
        return [f"ATP-ERR-005: {c.name}: could not open a session: {e}"]
    try:
        c.fn(s, rng)
    except Closed as e:
        s.violations.append(f"ATP-ERR-005: {c.name}: the router closed the session unasked ({e})")
    except TimeoutError:
        s.violations.append(f"{c.name}: the router stopped answering (timeout)")
    finally:
        s.close()
    return [f"{v} [{c.name}]" for v in s.violations]


LOG_BAD = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\"level\": \"(error|critical)\"")


def run(
    fl: Fleet,
    kind: str,
    *,
    seconds: float = 0,
    count: int = 0,
    seed: int = 1,
    only: set[str] | None = None,
    progress: Any = None,
    workers: int = 1,
) -> Summary:
    """Cases for ``seconds`` (or ``count`` of them) on ``kind``, from ``workers`` threads
    at once (sessions in parallel, each thread its own seeded generator); then the
    run-wide oracles."""
    summ = Summary(fl.target(kind), seed)
    summ.start = proc_stats(fl.pid)
    lock = threading.Lock()
    t0 = time.monotonic()

    def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while True:
            with lock:
                if (count and summ.cases >= count) or (
                    not count and time.monotonic() - t0 >= seconds
                ):
                    return
                summ.cases += 1
                n = summ.cases
            c = _pick(rng, kind, only)
            case_seed = rng.getrandbits(32)
            vs = run_one(fl, kind, c, random.Random(case_seed))
            with lock:
                summ.violations += [f"{v} [seed {case_seed}]" for v in vs]
                summ.sessions += 1
                summ.by_case[c.name] += 1
            if n % 25 == 0:
                summ.peak_rss_kb = max(summ.peak_rss_kb, proc_stats(fl.pid)["rss_kb"])
                if progress:
                    progress(summ)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summ.seconds = time.monotonic() - t0
    finish(fl, kind, summ)
    return summ


def finish(fl: Fleet, kind: str, summ: Summary) -> None:
    """The run-wide oracles: bounded state, a clean log, a clean client still served."""
    deadline = time.monotonic() + 15
    m: dict[str, float] = {}
    while time.monotonic() < deadline:
        m = metrics(fl.metrics_port)
        if not m or (m["sessions"] == 0 and m["streams"] == 0):
            break
        time.sleep(0.3)
    summ.metrics_end = m
    if m and (m["sessions"] or m["streams"]):
        summ.violations.append(f"ATP-LIMIT-002: {m} still open 15 s after the last session closed")
    summ.end = proc_stats(fl.pid)
    summ.peak_rss_kb = max(summ.peak_rss_kb, summ.end["rss_kb"])
    if summ.end["threads"] > summ.start["threads"] + 8:
        summ.violations.append(
            f"ATP-LIMIT-002: router threads {summ.start['threads']} -> {summ.end['threads']}"
        )
    if summ.end["fds"] > summ.start["fds"] + 16:
        summ.violations.append(
            f"ATP-LIMIT-002: router fds {summ.start['fds']} -> {summ.end['fds']}"
        )
    grow = summ.end["rss_kb"] - summ.start["rss_kb"]
    if grow > 256 * 1024:
        summ.violations.append(f"ATP-LIMIT-002: router RSS grew by {grow // 1024} MB")
    for line in fl.router.log().splitlines():
        if LOG_BAD.search(line):
            summ.violations.append(f"log: {line.strip()[:300]}")
    try:
        s = Session(fl.target(kind), token=fl.token)
        end = s.probe()
        s.close()
    except (Closed, OSError, TimeoutError) as e:
        end = f"{e}"
    if end != "fin":
        summ.violations.append(f"ATP-ERR-005: a clean client after the run: {end!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_each(
    fl: Fleet,
    kind: str,
    *,
    seed: int = 1,
    rounds: int = 1,
    workers: int = 2,
    only: set[str] | None = None,
) -> Summary:
    """Every case of ``kind`` ``rounds`` times, each with a seed fixed by ``seed``, the
    case's name and the round (the CI-sized run of tests/hostile/); then :func:`finish`."""
    todo = [
        (c, (seed * 7919 + sum(map(ord, c.name)) * 31 + k) & 0xFFFFFFFF)
        for k in range(rounds)
        for c in CASES
        if kind in c.kinds and (only is None or c.name in only)
    ]
    summ = Summary(fl.target(kind), seed)
    summ.start = proc_stats(fl.pid)
    lock = threading.Lock()
    t0 = time.monotonic()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                c, case_seed = todo.pop(0)
            vs = run_one(fl, kind, c, random.Random(case_seed))
            with lock:
                summ.violations += [f"{v} [seed {case_seed}]" for v in vs]
                summ.cases += 1
                summ.sessions += 1
                summ.by_case[c.name] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summ.seconds = time.monotonic() - t0
    finish(fl, kind, summ)
    return summ
