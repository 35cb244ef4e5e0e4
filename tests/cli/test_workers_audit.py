"""``atp serve --workers N --audit-log FILE``: each worker writes its own hash chain
(FILE with ``.worker<i>`` before the extension). Before, the N workers appended to the one
file, and ``atp audit verify`` called the interleaved chains TAMPERED. Real processes:
the supervisor, its workers, WebSocket clients, ``atp audit verify``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from atp_proto.client import connect
from atp_proto.router.workers import HAS_REUSEPORT, worker_audit_log
from atp_proto.testing.processes import RouterProcess, clean_env
from tests.router._helpers_e2e import ROOT, atp


async def _asks(url: str, n: int) -> None:
    """``n`` sessions, one stream each: the kernel spreads them over the workers."""
    for i in range(n):
        async with connect(url) as client:
            await client.ask(f"question {i}")


def test_worker_audit_log_names() -> None:
    assert worker_audit_log("/var/log/atp/audit.jsonl", 1) == "/var/log/atp/audit.worker1.jsonl"
    assert worker_audit_log("decisions", 0) == "decisions.worker0"


@pytest.mark.skipif(not HAS_REUSEPORT, reason="no SO_REUSEPORT")
def test_each_worker_writes_a_chain_that_verifies(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    router = RouterProcess(
        "--no-auth", "--workers", "2", "--quic", "off", "--audit-log", str(audit),
        env=clean_env(), cwd=ROOT,
    )  # fmt: skip
    try:
        trio.run(_asks, router.ws_url, 12)
    finally:
        assert router.stop(timeout=15) == 0, router.log()[-3000:]
    assert not audit.exists()  # nobody writes the shared name
    total = 0
    for i in range(2):
        log = Path(worker_audit_log(str(audit), i))
        assert log.is_file(), sorted(p.name for p in tmp_path.iterdir())
        verified = atp("audit", "verify", str(log), "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        report = json.loads(verified.stdout)
        assert report["ok"] is True
        total += report["records"]
    assert total == 12
