"""``atp serve --workers N`` gives up instead of restarting a failing worker for ever
(atp_proto/router/workers.py, like systemd's StartLimitBurst / StartLimitIntervalSec).

- a worker that exits 2 (bad usage or configuration), however long it ran, stops the set:
  exit 2 and one line saying so (before: only when it exited within 5 s of its start;
  later it was restarted for ever);
- a worker that exits N times within T seconds stops the set: exit 1, one line.

The CLI cases run the real supervisor (``atp serve --workers 2``) and its real workers;
the slow-exit case runs the supervisor on real child processes that exit 2 after 5.5 s.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator

import pytest
import trio

from atp_proto.router import workers
from atp_proto.testing.processes import RouterProcess, clean_env
from tests.router._helpers_e2e import ROOT, atp

needs_reuseport = pytest.mark.skipif(not workers.HAS_REUSEPORT, reason="no SO_REUSEPORT")

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_STARTED = re.compile(r"worker started worker=(\d+) pid=(\d+)")


def _person_lines(stderr: str) -> list[str]:
    """stderr without the log records: what is written for the person."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not _LOG_LINE.match(ln)]


@pytest.fixture
def busy_pair() -> Iterator[int]:
    """A port P with P+1 held by a listening socket (P itself free when we looked)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        holder = socket.socket()
        try:
            holder.bind(("127.0.0.1", port + 1))
        except OSError:
            holder.close()
            continue
        holder.listen()
        try:
            yield port
        finally:
            holder.close()
        return
    pytest.skip("no two adjacent loopback ports found")


@needs_reuseport
def test_a_worker_with_a_bad_configuration_stops_the_set_with_exit_2(busy_pair: int) -> None:
    """Worker 1's metrics port (the metrics port + 1) is held by another socket: the
    worker says so and exits 2; the supervisor stops worker 0 and exits 2 with one line."""
    proc = atp(
        "serve", "--no-auth", "--workers", "2", "--ws", "127.0.0.1:0",
        "--metrics", f"127.0.0.1:{busy_pair}", "--quic", "off",
        timeout=60,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = _person_lines(proc.stderr)
    # the worker's own line (worker 0's too, should another program have taken port P)
    assert any(f"127.0.0.1:{busy_pair + 1} (metrics)" in ln for ln in lines[:-1]), lines
    assert re.fullmatch(
        r"atp serve: error: worker [01] refused its options or configuration \(exit 2\): "
        r"stopping all workers",
        lines[-1],
    ), lines
    assert len(_STARTED.findall(proc.stderr)) == 2  # never restarted


@needs_reuseport
def test_a_worker_failing_n_times_within_t_stops_the_set_with_exit_1() -> None:
    """``--restart-limit 3/60``: worker 0 is killed three times (each time once restarted);
    the third exit stops the set (worker 1 drains) with exit 1 and one line."""
    router = RouterProcess(
        "--no-auth", "--workers", "2", "--restart-limit", "3/60", "--quic", "off",
        env=clean_env(), cwd=ROOT,
    )  # fmt: skip
    try:
        for kills in range(1, 4):
            deadline = time.monotonic() + 30
            while len(started := _STARTED.findall(router.log())) < kills + 1:
                assert time.monotonic() < deadline, router.log()[-3000:]
                assert router.proc.poll() is None, router.log()[-3000:]
                time.sleep(0.05)
            pid = int([p for w, p in started if w == "0"][-1])
            os.kill(pid, signal.SIGKILL)
        code = router.wait(timeout=30)
    finally:
        router.stop(timeout=10)
    log = router.log()
    assert code == 1, log[-3000:]
    assert "Traceback" not in log
    assert _person_lines(log)[-1] == (
        "atp serve: error: worker 0 exited 3 times within 60 s (last status -9): "
        "stopping all workers"
    ), log[-3000:]
    assert len([w for w, _ in _STARTED.findall(log) if w == "0"]) == 3  # not a 4th time
    assert "worker stopped worker=1 status=0" in log  # the other one drained


@pytest.mark.deadline(40)
async def test_a_worker_exiting_2_after_5_s_is_not_restarted() -> None:
    """The defect: a worker that exited 2 more than 5 s after its start was restarted for
    ever. Real child processes that exit 2 after 5.5 s: one start each, status 2."""
    opts = workers.WorkerOptions("127.0.0.1", 1, None, None)
    late = [sys.executable, "-c", "import sys, time; time.sleep(5.5); sys.exit(2)"]
    sup = workers._Supervisor(late, opts, 2)
    sup.opts.flags = lambda index: []  # type: ignore[method-assign]
    starts: list[int] = []
    real_open = trio.lowlevel.open_process

    async def counting(argv: list[str], **kw: object) -> trio.Process:
        proc = await real_open(argv, **kw)  # type: ignore[arg-type]
        starts.append(proc.pid)
        return proc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trio.lowlevel, "open_process", counting)
        status = await sup.run()
    assert status == 2 and len(starts) == 2
    assert "refused its options or configuration (exit 2)" in sup.reason


def test_restart_limit_parses_and_refuses_nonsense() -> None:
    assert workers.RestartLimit.parse("5/60") == workers.RestartLimit(5, 60.0)
    assert workers.RestartLimit.parse("2/0.5") == workers.RestartLimit(2, 0.5)
    for bad in ("5", "0/60", "5/0", "x/60", "5/inf", "5/nan", "-1/3", "/"):
        with pytest.raises(ValueError, match="N/SECONDS"):
            workers.RestartLimit.parse(bad)


def test_a_bad_restart_limit_is_one_line_bad_usage() -> None:
    proc = atp("serve", "--workers", "2", "--restart-limit", "often")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "atp serve: error: --restart-limit: expected N/SECONDS (e.g. 5/60), "
        "got 'often' (see atp serve --help)"
    )
