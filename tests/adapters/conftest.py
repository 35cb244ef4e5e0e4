"""Helpers for the adapter-plane tests: real adapter processes on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@dataclass
class Proc:
    process: trio.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.kill()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("OPENAI_API_KEY", None)
    env.update(extra or {})
    return env


@asynccontextmanager
async def spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None, ready: bytes = b"listening on"
) -> AsyncIterator[Proc]:
    """Start ``argv``, wait for its "... listening on HOST:PORT" line, kill it at the end."""
    with open(log, "ab") as errf:
        process = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=errf, env=_env(env), cwd=str(ROOT)
        )
    try:
        buf = b""
        assert process.stdout is not None
        with trio.fail_after(20):
            while ready not in buf or b"\n" not in buf.split(ready, 1)[1]:
                data = await process.stdout.receive_some(4096)
                if not data:
                    raise RuntimeError(
                        f"process exited before listening: {log.read_text()[-2000:]}"
                    )
                buf += data
        m = re.search(rb"listening on [^\s]*:(\d+)", buf)
        assert m, buf
        yield Proc(process, int(m.group(1)), log)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


def serve_argv(target: str, *args: str, port: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "atp_proto.cli",
        "adapter",
        "serve",
        target,
        "--listen",
        f"127.0.0.1:{port}",
        *args,
    ]


@asynccontextmanager
async def serve_adapter(
    tmp_path: Path, target: str, *args: str, port: int = 0, env: dict[str, str] | None = None
) -> AsyncIterator[Proc]:
    """``atp adapter serve TARGET`` as a real process on 127.0.0.1."""
    log = tmp_path / f"adapter-{target.replace(':', '_').replace('?', '_')[:40]}.log"
    async with spawn(serve_argv(target, *args, port=port), log, env) as proc:
        yield proc


@asynccontextmanager
async def grpcio_server(tmp_path: Path, *args: str) -> AsyncIterator[Proc]:
    """The independent grpcio implementation of the service (tests/adapters/grpcio_server.py)."""
    argv = [sys.executable, str(HERE / "grpcio_server.py"), *args]
    async with spawn(argv, tmp_path / "grpcio-server.log") as proc:
        yield proc
