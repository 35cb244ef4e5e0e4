"""Run adapter processes (``atp adapter serve``) from trio: the demo and tests use it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

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


@asynccontextmanager
async def spawn_adapter(
    target: str,
    *,
    options: Mapping[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    name: str | None = None,
    stderr: int | None = subprocess.DEVNULL,
    timeout: float = 20.0,
) -> AsyncIterator[AdapterProcess]:
    """Start ``atp adapter serve TARGET`` and wait until it listens; kill it on exit.

    Raises:
        RuntimeError: the process exited (or printed nothing) before listening.
    """
    argv = [sys.executable, "-m", "atp_proto", "adapter", "serve", target, "--listen", listen]
    for key, value in (options or {}).items():
        argv += ["--option", f"{key}={value}"]
    if name:
        argv += ["--name", name]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=stderr, env=env)
    try:
        assert process.stdout is not None
        buf = b""
        with trio.fail_after(timeout):
            while (m := _LISTENING.search(buf)) is None:
                data = await process.stdout.receive_some(4096)
                if not data:
                    raise RuntimeError(
                        f"adapter {target!r} exited before listening: "
                        f"{buf.decode(errors='replace')[-500:]}"
                    )
                buf += data
        yield AdapterProcess(process, int(m.group(1)))
    finally:
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(3):
                await process.wait()
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(2):
                await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
