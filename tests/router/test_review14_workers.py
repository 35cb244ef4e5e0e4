"""Review of issue 14's supervisor (atp_proto.router.workers): a defect found and fixed.

A worker is spawned on a thread (trio runs ``subprocess.Popen`` there): a SIGTERM that
arrives meanwhile signalled the workers already registered, not the one being spawned,
which then ran on; the supervisor waited for it forever (a second signal was needed).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import pytest
import trio

from atp_proto.router import workers


async def test_a_signal_during_a_spawn_reaches_the_new_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The supervisor is told to stop while its one worker (a real child process that
    would sleep for 5 s and exit 0) is being spawned: the worker still gets the SIGTERM
    (it ends by that signal), so the supervisor does not wait for it."""
    real_open = trio.lowlevel.open_process
    sup: Any = None
    spawned: list[trio.Process] = []

    async def open_during_a_signal(argv: Any, **kw: Any) -> trio.Process:
        proc = await real_open(argv, **kw)
        spawned.append(proc)
        sup._stop(signal.SIGTERM)  # the signal handler ran while Popen was on its thread
        return proc

    monkeypatch.setattr(trio.lowlevel, "open_process", open_during_a_signal)
    opts = workers.WorkerOptions("127.0.0.1", 1, None, None)
    sleeper = [sys.executable, "-c", "import sys, time; time.sleep(5)"]
    sup = workers._Supervisor(sleeper, opts, 1)
    sup.opts.flags = lambda index: []  # type: ignore[method-assign]
    await sup._keep(0)  # returns once its worker has ended
    assert sup.procs == {} and len(spawned) == 1
    assert spawned[0].returncode == -signal.SIGTERM  # before the fix: 0, after its sleep
