"""A client that leaves in the middle of its streams is a normal event in the router's
log: no ERROR, no traceback (the session logs "session closed"). Real processes: ``atp
serve`` with WebSocket and QUIC, and ``atp send`` clients SIGKILLed after their first
PARTIAL (their connections end without a close: the QUIC ones are found by the idle
timeout, their streams still waiting for credit), then clients that time out and close.
The deterministic case of the defect (QUIC, the first PARTIAL after the connection went)
is in tests/session/test_session_ending.py."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from atp_proto.testing.certs import make_cert
from atp_proto.testing.processes import RouterProcess, clean_env
from tests.router._helpers_e2e import ROOT

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ")


def _send(url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "atp_proto", "send", url, "--prompt", "hello " * 40, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
        cwd=ROOT,
    )


def test_clients_leaving_mid_stream_log_no_error(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    router = RouterProcess(
        "--no-auth", "--quic", "127.0.0.1:0", "--quic-cert", cert.cert, "--quic-key", cert.key,
        adapters={"persona": "builtin:persona?latency_ms=150"},
        # a QUIC peer that vanished is noticed by the idle timeout: 2 s, not 65
        config_toml="[transport.quic]\nidle_timeout_s = 2.0\n",
        env=clean_env(), cwd=ROOT,
    )  # fmt: skip
    try:
        urls = [(router.ws_url, ()), (router.quic_url, ("--ca", cert.cert))]
        killed = [_send(url, *extra) for url, extra in urls for _ in range(3)]
        for proc in killed:  # each gets its first PARTIAL, then dies without a close
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("PARTIAL"), router.log()[-2000:]
            proc.send_signal(signal.SIGKILL)
        timed_out = [_send(url, *extra, "--timeout", "0.4") for url, extra in urls]
        for proc in [*killed, *timed_out]:
            proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while router.log().count("session closed") < len(killed) + len(timed_out):
            assert time.monotonic() < deadline, router.log()[-3000:]
            time.sleep(0.1)
    finally:
        router.stop(timeout=10)
    log = router.log()
    assert "Traceback" not in log, log[-3000:]
    levels = [m.group(1) for ln in log.splitlines() if (m := _LOG_LINE.match(ln))]
    assert "ERROR" not in levels, log[-3000:]
    # every line is a log record: nothing multi-line slipped in
    assert all(_LOG_LINE.match(ln) for ln in log.splitlines() if ln.strip()), log[-3000:]
