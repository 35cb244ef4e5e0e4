"""Fixtures of the conformance suite's own tests: real router processes (the reference, and
broken variants started as real ``atp serve`` processes), loopback sockets held for the
suite's scripted adapter (no race for a free port), and the
suite run through its real entry point (``python -m atp_proto conformance run``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from atp_proto.testing import RouterProcess, clean_env

ROOT = Path(__file__).resolve().parents[2]
BROKEN = Path(__file__).with_name("broken")
#: a 32-byte HS256 secret for the auth runs
SECRET = "conformance-test-secret-0123456789abcdef"
#: the example Rego policy, and a SYN meta it denies (rule no_secrets)
POLICY = ROOT / "examples" / "policy" / "policy.rego"
DENIED_META = '{"data_scope": ["no_secrets"], "tool_permissions": ["secrets.read"]}'
#: a short handshake timeout, so router.tls.handshake-timeout takes 2 s, not 10
HANDSHAKE_2S = "[router]\nhandshake_timeout_s = 2.0\n"


@contextmanager
def adapter_socket() -> Iterator[socket.socket]:
    """A listening loopback socket for the suite's scripted adapter, held from before the
    router starts until the run ends: its port goes into the router's ``--adapter`` URL and
    the socket itself to the runner (``--adapter-listen fd:N``, ``run_suite(adapter=...)``),
    so no other process (another test worker) can take the port in between."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback TCP port that refuses connections: bound (so nobody else can listen on
    it) but not listening, for as long as the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@contextmanager
def router(
    *args: str,
    variant: str | None = None,
    adapters: Mapping[str, str] | None = None,
    key_file: Path | None = None,
    config_toml: str | None = None,
) -> Iterator[RouterProcess]:
    """``atp serve`` (no auth unless ``key_file``), optionally broken by ``variant``."""
    env = clean_env()
    if variant:
        env["CONF_BROKEN_VARIANT"] = variant
        env["PYTHONPATH"] = os.pathsep.join([str(BROKEN / "site"), str(ROOT)])
    auth = ["--jwt-key-file", str(key_file)] if key_file else ["--no-auth"]
    with RouterProcess(
        *auth, *args, adapters=adapters, env=env, cwd=ROOT, config_toml=config_toml
    ) as r:
        yield r


#: ``run_suite(fail_fast=True)``: the ``--timeout-scale`` of a run against a broken router
#: whose every case is meant to fail but router.basic.final. Most such cases fail by
#: waiting out a bound (5 s, one case after another) for a frame the variant never sends;
#: every variant breaks its MUST at once (milliseconds on loopback), so shorter bounds
#: still see each break. Runs that also check which cases pass keep the full bounds, and
#: so does every run against the reference router.
FAIL_FAST = ("--timeout-scale", "0.4")


def run_suite(
    *args: str,
    timeout: float = 120,
    adapter: socket.socket | tuple[socket.socket, socket.socket] | None = None,
    fail_fast: bool = False,
) -> tuple[int, dict[str, Any], str]:
    """``python -m atp_proto conformance run ARGS --json``: exit status, report, stderr.
    ``adapter`` (from :func:`adapter_socket`, or two for the adapters conf and conf2) is
    passed on as ``--adapter-listen fd:N`` (``fd:N,fd:M``); ``fail_fast`` adds
    :data:`FAIL_FAST`."""
    if fail_fast:
        args = (*args, *FAIL_FAST)
    fds: tuple[int, ...] = ()
    if adapter is not None:
        socks = adapter if isinstance(adapter, tuple) else (adapter,)
        fds = tuple(s.fileno() for s in socks)
        args = (*args, "--adapter-listen", ",".join(f"fd:{fd}" for fd in fds))
    proc = subprocess.run(
        [sys.executable, "-m", "atp_proto", "conformance", "run", *args, "--json"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        pass_fds=fds,
    )
    report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, report, proc.stderr


def failures(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for c in report["cases"] if c["verdict"] in ("FAIL", "ERROR")]


def violated_ids(report: Mapping[str, Any]) -> set[str]:
    """Every requirement ID a failing case names as broken."""
    return {i for c in failures(report) for i in c["violated"]}


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "hs256.key"
    path.write_text(SECRET)
    return path
