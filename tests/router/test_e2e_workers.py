"""``atp serve --workers N`` (issue 14 item 5): N router processes on one port, supervised.

Real processes: the supervisor is ``atp serve --workers 2`` (RouterProcess), its workers
are the routers; clients are real WebSocket and QUIC sessions on loopback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial

import pytest
import trio

from atp_proto.client import StreamError, connect
from atp_proto.router.workers import HAS_REUSEPORT
from atp_proto.testing.certs import CertFiles, make_cert
from atp_proto.testing.http import http_get, metric_value
from atp_proto.testing.processes import RouterProcess, clean_env
from atp_proto.testing.redis_server import RedisServer, RedisUnavailable

from ._helpers_e2e import ROOT

needs_reuseport = pytest.mark.skipif(not HAS_REUSEPORT, reason="the OS lacks SO_REUSEPORT")

_LISTEN = re.compile(r"router listening .*?metrics=http://[^:]+:(\d+)/metrics.* worker=(\d+)")
_STARTED = re.compile(r"worker started worker=(\d+) pid=(\d+)")


def _wait_for(router: RouterProcess, pattern: re.Pattern[str], count: int, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.findall(router.log())
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} x {pattern.pattern} not logged: {router.log()[-3000:]}")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def fleet(cert: CertFiles) -> Iterator[RouterProcess]:
    """``atp serve --workers 2`` with QUIC (worker 0) and a slow persona adapter."""
    router = RouterProcess(
        "--no-auth",
        "--workers",
        "2",
        "--quic-cert",
        cert.cert,
        "--quic-key",
        cert.key,
        adapters={"persona": "builtin:persona?latency_ms=20"},
        env=clean_env(),
        cwd=ROOT,
    )
    try:
        _wait_for(router, _LISTEN, 2)
        yield router
    finally:
        router.stop(timeout=15)


async def _asks(url: str, n: int, **kw: object) -> list[str]:
    """``n`` sessions (each its own connection) asking once; their answers' adapters."""
    out = []
    for i in range(n):
        async with connect(url, **kw) as client:  # type: ignore[arg-type]
            final = await client.ask(f"question {i}")
            out.append(final.content["adapter"])
    return out


def _sessions(metrics_port: int) -> float:
    async def get() -> float:
        _, text = await http_get(metrics_port, "/metrics")
        return metric_value(text, "atp_sessions_total") or 0.0

    return trio.run(get)


@needs_reuseport
def test_two_workers_serve_one_port_and_a_killed_one_is_restarted(
    fleet: RouterProcess, cert: CertFiles
) -> None:
    """Both workers accept on the one WebSocket port (each its own metrics port, every log
    line naming its worker); QUIC is served by worker 0 only; a worker SIGKILLed is
    restarted by the supervisor while the other keeps serving."""
    listening = _wait_for(fleet, _LISTEN, 2)
    metrics = {int(w): int(p) for p, w in listening}
    assert sorted(metrics) == [0, 1]
    lines = [ln for ln in fleet.log().splitlines() if "router listening" in ln]
    quic = next(ln for ln in lines if "worker=0" in ln)
    assert "quic=quic://127.0.0.1:" in quic
    assert all("quic=off" in ln for ln in lines if "worker=1" in ln)
    port = fleet.ws_url.rsplit(":", 1)[1].split("/")[0]
    assert f"quic://127.0.0.1:{port}" in quic  # UDP beside TCP, the same port number

    assert trio.run(_asks, fleet.ws_url, 24) == ["persona"] * 24
    per_worker = {w: _sessions(p) for w, p in metrics.items()}
    assert sum(per_worker.values()) == 24
    assert all(n > 0 for n in per_worker.values()), per_worker  # the kernel spread them
    assert trio.run(partial(_asks, f"quic://127.0.0.1:{port}", 1, ca_file=cert.cert)) == ["persona"]

    pids = dict(_wait_for(fleet, _STARTED, 2))
    os.kill(int(pids["0"]), signal.SIGKILL)
    # (connections already queued on the killed worker's socket are reset with it)
    _wait_for(fleet, re.compile("worker exited: restarting worker=0"), 1)
    assert trio.run(_asks, fleet.ws_url, 4) == ["persona"] * 4  # worker 1 serves meanwhile
    _wait_for(fleet, _LISTEN, 3)  # worker 0 again
    log = fleet.log()
    assert re.search(r"worker exited: restarting worker=0 status=-9", log), log[-2000:]
    assert len(_STARTED.findall(log)) == 3
    assert trio.run(_asks, fleet.ws_url, 8) == ["persona"] * 8
    assert trio.run(partial(_asks, f"quic://127.0.0.1:{port}", 1, ca_file=cert.cert)) == ["persona"]


@needs_reuseport
def test_sigterm_drains_every_worker_and_exits_0(fleet: RouterProcess) -> None:
    """SIGTERM to the supervisor: every worker drains (a stream in flight finishes with
    its FINAL), the supervisor exits 0 once all have stopped."""
    answers: list[str] = []

    async def run() -> None:
        async with connect(fleet.ws_url) as client:
            async with client.stream("a slow answer") as st:
                async for item in st:
                    if not answers:
                        fleet.terminate()  # mid-stream
                    answers.append(type(item).__name__)

    trio.run(run)
    assert answers[-1] == "Final"
    assert fleet.wait(15) == 0
    log = fleet.log()
    assert "signal received, draining the workers" in log
    for w in (0, 1):
        assert re.search(rf"draining grace_s=\S+ sessions=\d+ worker={w}", log), log[-2000:]
        assert f"worker stopped worker={w} status=0" in log


def test_workers_without_reuse_port_refuse_in_one_line() -> None:
    """Where the OS lacks SO_REUSEPORT (simulated: the constant removed before atp loads)
    ``--workers 2`` refuses in one line with exit status 2, naming the alternative."""
    code = (
        "import trio, socket, sys; del socket.SO_REUSEPORT; from atp_proto.cli import main; "
        "sys.argv = ['atp', 'serve', '--workers', '2', '--no-auth', '--ws', '127.0.0.1:0']; "
        "raise SystemExit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "SO_REUSEPORT" in lines[0] and "load balancer" in lines[0]
    assert "Traceback" not in done.stderr


@needs_reuseport
def test_workers_share_a_tenant_quota_through_redis() -> None:
    """[ATP-BUDGET-014] ``--workers 2 --redis URL`` with 2 concurrent streams per tenant:
    of 12 sessions opened at once (spread over both workers by the kernel) exactly 2
    run; each worker alone would have run 2."""
    try:
        server = RedisServer()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        router = RouterProcess(
            "--no-auth",
            "--workers",
            "2",
            "--redis",
            server.url,
            adapters={"persona": "builtin:persona?latency_ms=300"},
            config_toml="[quota]\nconcurrent = 2\n",
            env=clean_env(),
            cwd=ROOT,
        )
        try:
            listening = _wait_for(router, _LISTEN, 2)
            outcomes: list[str] = []

            async def one() -> None:
                async with connect(router.ws_url) as client:
                    try:
                        await client.ask("hold a slot")
                        outcomes.append("ok")
                    except StreamError as exc:
                        outcomes.append(exc.code)

            async def run() -> None:
                async with trio.open_nursery() as nursery:
                    for _ in range(12):
                        nursery.start_soon(one)

            trio.run(run)
            assert sorted(outcomes) == ["EWINDOW"] * 10 + ["ok"] * 2
            per_worker = [_sessions(int(p)) for p, _ in listening]
            assert all(n > 0 for n in per_worker), per_worker
        finally:
            router.stop(timeout=15)
