"""Helpers for the adapter-plane tests: real adapter processes on loopback.

The process handling is :mod:`atp_proto.testing.processes`'; this adds what is specific to
the suite: ``tests/adapters`` and the repository root on the child's PYTHONPATH (vendor
fixtures, the grpcio server), no OpenAI key, logs under the test's tmp_path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from atp_proto.testing.processes import AdapterProcess, adapter_argv, spawn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

#: the old name of the process handle
Proc = AdapterProcess


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("OPENAI_API_KEY", None)
    env.update(extra or {})
    return env


def serve_argv(target: str, *args: str, port: int = 0) -> list[str]:
    return adapter_argv(target, *args, listen=f"127.0.0.1:{port}")


@asynccontextmanager
async def serve_adapter(
    tmp_path: Path, target: str, *args: str, port: int = 0, env: dict[str, str] | None = None
) -> AsyncIterator[AdapterProcess]:
    """``atp adapter serve TARGET`` as a real process on 127.0.0.1."""
    log = tmp_path / f"adapter-{target.replace(':', '_').replace('?', '_')[:40]}.log"
    argv = serve_argv(target, *args, port=port)
    async with spawn(argv, log=log, env=_env(env), cwd=ROOT) as proc:
        yield proc


@asynccontextmanager
async def grpcio_server(tmp_path: Path, *args: str) -> AsyncIterator[AdapterProcess]:
    """The independent grpcio implementation of the service (tests/adapters/grpcio_server.py)."""
    argv = [sys.executable, str(HERE / "grpcio_server.py"), *args]
    async with spawn(argv, log=tmp_path / "grpcio-server.log", env=_env(None), cwd=ROOT) as proc:
        yield proc
