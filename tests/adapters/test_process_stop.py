"""The one stop sequence of server processes (atp_proto/adapters/process.py), used by the
demo's ``spawn_adapter`` and by atp_proto/testing/processes.py alike: SIGTERM, then
SIGKILL after the grace period, and no process left behind when the caller is cancelled.
Real processes: one that exits on SIGTERM, one that ignores it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import trio

from atp_proto.adapters.process import listening_process, stop_popen, stop_process

#: prints a "listening on" line, then sleeps; with "ignore", SIGTERM does nothing
_SERVER = (
    "import signal, sys, time\n"
    "if sys.argv[1] == 'ignore': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('listening on 127.0.0.1:4242', flush=True)\n"
    "time.sleep(60)\n"
)


def _argv(mode: str) -> list[str]:
    return [sys.executable, "-c", _SERVER, mode]


@pytest.mark.parametrize(("mode", "status"), [("obey", -signal.SIGTERM), ("ignore", -9)])
async def test_stop_process_terms_then_kills(mode: str, status: int) -> None:
    with trio.fail_after(20):
        async with listening_process(_argv(mode), stop_timeout=0.5) as (process, port):
            assert port == 4242
        assert process.returncode == status


async def test_a_cancelled_caller_leaves_no_process() -> None:
    """Cancelled while inside: the stop still waits, and still kills the one that
    ignores SIGTERM (the cleanup is shielded)."""
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with listening_process(_argv("ignore"), stop_timeout=0.5) as (process, _):
                scope.cancel()
                await trio.sleep_forever()
        assert process.returncode == -9


async def test_stop_process_of_one_already_gone() -> None:
    process = await trio.lowlevel.open_process([sys.executable, "-c", "pass"])
    await process.wait()
    await stop_process(process, 0.5)
    assert process.returncode == 0


def test_stop_popen_terms_all_then_kills_the_stubborn() -> None:
    procs = [
        subprocess.Popen(_argv(mode), stdout=subprocess.PIPE, text=True)
        for mode in ("obey", "ignore")
    ]
    try:
        for p in procs:  # both ready: the handler is installed before the line
            assert p.stdout is not None and "listening" in p.stdout.readline()
        stop_popen(procs, 0.5)
        assert [p.returncode for p in procs] == [-signal.SIGTERM, -9]
    finally:
        for p in procs:
            if p.stdout is not None:
                p.stdout.close()
