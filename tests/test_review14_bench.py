"""Review of issue 14's ``atp bench e2e`` CLI: bad flags and Ctrl-C.

Defect found and fixed: the numeric options took ``nan`` and ``inf`` (``--rate nan``,
``--duration inf`` ran for ever), ``--warmup`` and ``--chunk-delay-ms`` took negative
values, and nothing bounded the processes and clients a run may ask for (``--procs
100000`` forked load processes until the machine gave out). Each is now refused at parse
time: exit 2 and one line naming the option, no traceback.

Defect found and fixed: the benchmark killed by SIGKILL (or the OOM killer) left its
router and adapter processes running for ever, orphans holding ports: they now get
SIGTERM when it dies (PR_SET_PDEATHSIG, atp_proto.testing.processes.die_with_parent).

Checked as it was (no defect): Ctrl-C (SIGINT to the terminal's process group) in the
middle of a run ends the router, its adapters and the load processes: nothing of the run
is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from atp_proto.testing.processes import clean_env

CLI = [sys.executable, "-m", "atp_proto", "bench", "e2e"]


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--procs", "100000", "at most 64"),
        ("--sessions", "1000000", "at most 10000"),
        ("--concurrency", "10000000", "at most 100000"),
        ("--slow-readers", "10000000", "at most 100000"),
        ("--open-streams", "1000000", "at most 100000"),
        ("--workers", "1000", "at most 64"),
        ("--rate", "nan", "must be a positive number"),
        ("--rate", "1e12", "at most 1e+06"),
        ("--duration", "inf", "must be a positive number"),
        ("--warmup", "-1", "must be 0 or more"),
        ("--chunk-delay-ms", "-5", "must be 0 or more"),
        ("--sweep", "100,inf", "rates must be positive"),
    ],
)
def test_bad_values_exit_2_with_one_line(flag: str, value: str, says: str) -> None:
    proc = subprocess.run(
        [*CLI, "--quick", "--json", flag, value],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""  # --json: nothing on stdout that a script would misread
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"atp bench e2e: error: {flag}: ") and says in last, last
    assert "Traceback" not in proc.stderr


def _session_pids(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # the session id; not a zombie
            out.append(int(entry))
    return out


def _interrupted_run(how: Callable[[int], None]) -> list[int]:
    """Start a quick load run in a session of its own, ``how(cli_pid)`` once its
    router, adapters and load processes are up; what of the session is left 30 s later."""
    proc = subprocess.Popen(
        [*CLI, "--quick", "--scenario", "load", "--duration", "60", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        # the CLI, 2 adapters, the router, 2 load processes
        while len(_session_pids(proc.pid)) < 6 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it was interrupted"
            time.sleep(0.2)
        assert len(_session_pids(proc.pid)) >= 6, "the run did not start its processes"
        time.sleep(1.0)
        how(proc.pid)
        proc.wait(30)
        deadline = time.monotonic() + 30
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        return _session_pids(proc.pid)
    finally:
        if proc.poll() is None or _session_pids(proc.pid):
            for pid in _session_pids(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_mid_run_leaves_no_process_behind() -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends) mid-run: every
    process of the run is gone."""
    assert _interrupted_run(lambda pid: os.killpg(pid, signal.SIGINT)) == []


@pytest.mark.slow
def test_sigkill_of_the_benchmark_leaves_no_router_or_adapter_behind() -> None:
    """SIGKILL of the benchmark's own process only (no cleanup code runs): its router
    and adapters end as well (before: they ran on, reparented to init)."""
    assert _interrupted_run(lambda pid: os.kill(pid, signal.SIGKILL)) == []
