"""Running the client under test (``--exec``) as a process beside a scripted peer."""

from __future__ import annotations

import subprocess
from typing import Any

import trio


async def run_testee(argv: list[str], outcome: dict[str, Any], done: trio.Event, tail: int) -> None:
    """Run ``argv`` to its end; put its exit code and the last ``tail`` characters of its
    stdout and stderr in ``outcome`` (or ``outcome["error"]`` when it cannot start), then
    set ``done``."""
    try:
        proc = await trio.run_process(
            argv,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        outcome["error"] = f"cannot start {argv[0]}: {exc}"
        done.set()
        return
    outcome["rc"] = proc.returncode
    outcome["stdout"] = proc.stdout.decode("utf-8", "replace")[-tail:]
    outcome["stderr"] = proc.stderr.decode("utf-8", "replace")[-tail:]
    done.set()
