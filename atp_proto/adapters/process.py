"""Run adapter processes (``atp adapter serve``) from trio: the demo and tests use it.

The one place that starts a server process, waits for its "listening on HOST:PORT" line
and stops it: :func:`listening_process` (trio) and :func:`stop_popen` (synchronous, for
:mod:`atp_proto.testing.processes`), both SIGTERM first (the graceful path the programs
implement), then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

_LISTENING = re.compile(rb"listening on [^\s]*:(\d+)")


@dataclass
class AdapterProcess:
    process: trio.Process
    port: int

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.kill()


def adapter_argv(
    target: str,
    *args: str,
    listen: str = "127.0.0.1:0",
    options: Mapping[str, str] | None = None,
    name: str | None = None,
) -> list[str]:
    """The command line of ``atp adapter serve TARGET`` (``options`` as ``--option K=V``)."""
    argv = [sys.executable, "-m", "atp_proto", "adapter", "serve", target, "--listen", listen]
    for key, value in (options or {}).items():
        argv += ["--option", f"{key}={value}"]
    if name:
        argv += ["--name", name]
    return [*argv, *args]


async def stop_process(process: trio.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL when it has not exited within ``grace`` seconds; shielded, so
    that a cancelled caller still leaves no process behind."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(2):
                await process.wait()


def stop_popen(processes: Iterable[subprocess.Popen[Any]], grace: float) -> None:
    """:func:`stop_process` for synchronous processes: SIGTERM to all, then each waited
    for at most ``grace`` seconds (one after the other) before SIGKILL."""
    procs = list(processes)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@asynccontextmanager
async def listening_process(
    argv: Sequence[str],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 20.0,
    stop_timeout: float = 3.0,
) -> AsyncIterator[tuple[trio.Process, int]]:
    """Start a server ``argv`` and wait for its "listening on HOST:PORT" line on stdout;
    yield the process and the port. stderr goes to ``log`` (appended; None: discarded).
    On exit: :func:`stop_process`.

    Raises:
        RuntimeError: the process exited before listening.
        trio.TooSlowError: it printed no such line within ``timeout``.
    """
    full_env = dict(env if env is not None else os.environ, PYTHONUNBUFFERED="1")
    with contextlib.ExitStack() as files:
        errf = files.enter_context(open(log, "ab")) if log else subprocess.DEVNULL
        process = await trio.lowlevel.open_process(
            list(argv), stdout=subprocess.PIPE, stderr=errf, env=full_env, cwd=cwd
        )
    try:
        assert process.stdout is not None
        buf = b""
        with trio.fail_after(timeout):
            # the whole line: the port's last digit may arrive in the next read
            while (m := _LISTENING.search(buf)) is None or b"\n" not in buf[m.end() :]:
                data = await process.stdout.receive_some(4096)
                if not data:
                    tail = log.read_text(errors="replace")[-2000:] if log else ""
                    raise RuntimeError(
                        f"{' '.join(argv[:6])} exited before listening: "
                        f"{buf.decode(errors='replace')[-500:]}{tail}"
                    )
                buf += data
        yield process, int(m.group(1))
    finally:
        await stop_process(process, stop_timeout)
        if process.stdout is not None:
            with trio.CancelScope(shield=True):
                await process.stdout.aclose()


@asynccontextmanager
async def spawn_adapter(
    target: str,
    *,
    options: Mapping[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    name: str | None = None,
    log: Path | None = None,
    timeout: float = 20.0,
) -> AsyncIterator[AdapterProcess]:
    """Start ``atp adapter serve TARGET`` and wait until it listens; stop it on exit.
    Its stderr goes to ``log`` (None: discarded).

    Raises:
        RuntimeError: the process exited (or printed nothing) before listening.
    """
    argv = adapter_argv(target, listen=listen, options=options, name=name)
    async with listening_process(argv, log=log, timeout=timeout) as (process, port):
        yield AdapterProcess(process, port)
