"""Regression tests from the review of the routing brain (issue 13): a real router on
loopback over real gRPC adapter processes (``tests.router.scripted_adapter:Scripted``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from atp_proto.client import Final, Partial, connect
from atp_proto.router import Router, RouterConfig
from atp_proto.testing.processes import RouterProcess, adapter_fleet

from ._helpers_e2e import ROOT, clean_env
from .conftest import ws_url

TARGET = "tests.router.scripted_adapter:Scripted"

ADAPTERS: dict[str, dict[str, str]] = {
    # cheap, promises much (estimate 0.9) and answers unsure (0.3)
    "overrated": {
        "answer": "43",
        "confidence": "0.3",
        "est_confidence": "0.9",
        "usd_per_1k": "500",
    },
    # dearer, promises less than the champion's estimate (0.7), more than its answer
    "middling": {"answer": "42", "confidence": "0.7", "usd_per_1k": "10000"},
    # on a SLOW prompt: "lag" answers after 0.4 s (unsure), "laggard" after 1.5 s (sure)
    "lag": {"answer": "42 lag", "confidence": "0.6", "usd_per_1k": "1000", "slow_ms": "400"},
    "laggard": {"answer": "42", "confidence": "0.95", "usd_per_1k": "100000", "slow_ms": "1500"},
}


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    with adapter_fleet(TARGET, ADAPTERS, cwd=ROOT) as out:
        yield out


async def _router(nursery: trio.Nursery, urls: dict[str, str], **fields: Any) -> Router:
    cfg = RouterConfig(
        ws_port=0, metrics_port=None, auth=False, adapters=urls, health_interval_s=60, **fields
    )
    router = Router(cfg.validate())
    await nursery.start(router.serve)
    return router


async def test_consensus_never_escalates_below_the_champions_estimate(
    nursery: trio.Nursery, urls: dict[str, str]
) -> None:
    """[ATP-STRAT-005] without predicted quality, a challenger's estimate confidence must be
    above the champion's estimate confidence AND its answer's: "middling" (estimate 0.7)
    is above "overrated"'s answer (0.3) but below its estimate (0.9), so consensus at
    min_confidence 0.8 must not escalate to it (it did: only the answer was compared)."""
    router = await _router(nursery, urls)
    partials: list[Partial] = []
    async with connect(ws_url(router)) as client:
        meta = {"adapters": ["overrated", "middling"], "min_confidence": 0.8}
        async with client.stream("which?", meta=meta) as st:
            async for item in st:
                if isinstance(item, Final):
                    final = item
                    break
                partials.append(item)
    assert [t["adapter"] for t in final.telemetry["tried"]] == ["overrated"]
    assert final.content["adapter"] == "overrated"
    assert not any("escalate" in p.content for p in partials)


#: imported by the router process before anything else: files it writes are capped at
#: 3000 bytes (RLIMIT_FSIZE), a write past that fails with EFBIG as on a full disk
_FSIZE_SITECUSTOMIZE = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
"""


def test_a_failing_decision_log_write_does_not_kill_the_router(tmp_path: Path) -> None:
    """[ATP-AUDIT-004] a decision log that cannot be written (here: the file size limit, as
    a full disk would) drops and counts records; the router keeps serving (the writer's
    OSError escaped into the router's nursery and took every session down)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FSIZE_SITECUSTOMIZE)
    env = clean_env({"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])})
    log = tmp_path / "decisions.jsonl"
    with RouterProcess(
        "--no-auth",
        "--audit-log",
        str(log),
        adapters={"echo": "builtin:echo"},
        env=env,
        cwd=ROOT,
    ) as router:

        async def streams() -> int:
            done = 0
            for i in range(12):
                async with connect(router.url) as client:
                    async with client.stream(f"hello {i} " + "x" * 200) as st:
                        done += len([item async for item in st if isinstance(item, Final)])
                await trio.sleep(0.05)  # let the writer write this stream's record
            return done

        assert trio.run(streams) == 12
        assert router.proc.poll() is None, router.log()[-2000:]
        assert "decision log write failed" in router.log()
    assert 0 < log.stat().st_size <= 3000


def test_feedback_over_https_when_the_router_has_tls(tmp_path: Path) -> None:
    """[ATP-FEED-002] [ATP-FEED-004] a router with TLS takes feedback over https:// on its
    HTTP port, from the client library and `atp feedback --ca` (both refused https:// URLs,
    so a bearer token could only go to a TLS router in the clear)."""
    import secrets

    from atp_proto.client import feedback
    from atp_proto.router import issue_token

    from ._helpers_e2e import atp, router_process

    key = secrets.token_hex(32)
    token = issue_token(key.encode(), tenant="acme", subject="alice")
    home = tmp_path / "xdg"
    with router_process(
        "--dev-cert",
        "--learner",
        "bandit",
        "--adapter",
        "echo=builtin:echo",
        "--ws",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        env={"XDG_DATA_HOME": str(home), "ATP_JWT_KEY": key},
    ) as router:
        cert = str(home / "atp" / "dev-cert.pem")
        https = f"https://localhost:{router.metrics_port}"

        async def go() -> list[str]:
            ids = []
            async with connect(router.ws_url, token=token, ca_file=cert) as client:
                for i in range(2):
                    async with client.stream(f"judge me {i}") as st:
                        ids += [
                            item.telemetry["decision_id"]
                            async for item in st
                            if isinstance(item, Final)
                        ]
            result = await feedback(https, ids[0], 0.9, token=token, ca_file=cert)
            assert result.accepted
            return ids

        ids = trio.run(go)
        r = atp("feedback", ids[1], "0.7", "--url", https, "--token", token, "--ca", cert)
        assert r.returncode == 0, r.stderr
        assert "feedback taken" in r.stdout


async def test_a_cancelled_hedge_can_still_be_escalated_to(
    nursery: trio.Nursery, urls: dict[str, str]
) -> None:
    """[ATP-STRAT-005] [ATP-STRAT-006] "lag" is hedged with "laggard", "lag" answers first
    (laggard is cancelled before any output), at confidence 0.6 < min_confidence 0.9: the
    stream escalates to laggard, which never answered. (It did not: the cancelled hedge
    counted as tried, so escalation skipped the one stronger candidate.)"""
    router = await _router(nursery, urls)
    async with connect(ws_url(router)) as client:
        for i in range(8):  # the hedger learns lag's time to first chunk (no hedge yet)
            async with client.stream(f"warm {i}", meta={"adapters": ["lag"]}) as st:
                _ = [item async for item in st]
        meta = {"adapters": ["lag", "laggard"], "hedge": True, "min_confidence": 0.9}
        async with client.stream("SLOW hedge", meta=meta) as st:
            finals = [item async for item in st if isinstance(item, Final)]
    assert len(finals) == 1
    final = finals[0]
    assert final.telemetry["hedge"] == {"from": "lag", "to": "laggard", "won": False}
    tried = [(t["adapter"], t["status"]) for t in final.telemetry["tried"]]
    assert sorted(tried[:2]) == [("lag", "ok"), ("laggard", "cancelled")]
    assert tried[2:] == [("laggard", "ok")]
    assert final.content["adapter"] == "laggard"


@pytest.mark.parametrize("strategy", ["quorum", "vote"])
async def test_max_parallel_zero_is_ewindow_under_quorum_and_vote(
    nursery: trio.Nursery, urls: dict[str, str], strategy: str
) -> None:
    """[ATP-BUDGET-004] a window of max_parallel 0 allows no adapter call: EWINDOW, as under
    every other strategy (quorum and vote started 0 calls and said EAGENTDOWN "every adapter
    failed (last: none tried)" with a retry hint: a client would retry for ever)."""
    from atp_proto.client import StreamError
    from atp_proto.frames import BudgetWindow

    router = await _router(nursery, urls)
    async with connect(ws_url(router)) as client:
        meta = {"adapters": ["overrated", "middling"], "strategy": strategy}
        with pytest.raises(StreamError) as exc:
            async with client.stream("x", meta=meta, window=BudgetWindow(max_parallel=0)) as st:
                _ = [item async for item in st]
    assert exc.value.code == "EWINDOW", exc.value.message


GOOD_TABLE = '[default]\nlane = "silver"\n'
BAD_TABLE = '[default]\nlane = ["gold"]\n'  # TOML, but no lane name


def test_a_routing_table_with_a_lane_list_keeps_the_router_up(tmp_path: Path) -> None:
    """[ATP-SEC-018] a routing table whose ``lane`` is a list (not a lane name) is a table
    that does not load: on SIGHUP the router keeps the last good one and says why; at start
    ``atp serve`` exits 2 in one line. (``value not in LANES`` raised TypeError, unhashable
    list: it escaped the reloader and killed the router; at start, a traceback.)"""
    import signal
    import time

    from ._helpers_e2e import atp

    table = tmp_path / "routing.toml"
    table.write_text(GOOD_TABLE)
    with RouterProcess(
        "--no-auth",
        "--routing-table",
        str(table),
        adapters={"echo": "builtin:echo"},
        config_toml="[policy]\npoll_s = 3600\n",
        env=clean_env(),
        cwd=ROOT,
    ) as router:

        async def one() -> list[Any]:
            async with connect(router.url) as client:
                async with client.stream("still there?") as st:
                    return [item async for item in st if isinstance(item, Final)]

        assert len(trio.run(one)) == 1
        table.write_text(BAD_TABLE)
        router.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "policy reload (SIGHUP) failed" not in router.log():
            assert router.proc.poll() is None, router.log()[-2000:]
            assert time.monotonic() < deadline, router.log()[-2000:]
            time.sleep(0.05)
        assert "default.lane" in router.log()
        assert len(trio.run(one)) == 1
        assert router.proc.poll() is None
    r = atp("serve", "--no-auth", "--ws", "127.0.0.1:0", "--routing-table", str(table))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "default.lane" in r.stderr


def test_sighup_right_after_listening_reloads_and_does_not_kill(tmp_path: Path) -> None:
    """[ATP-SEC-018] the router says "router listening" only once SIGHUP reloads: a SIGHUP
    sent at once reloads (SIGHUP's default action, ending the process, killed a router
    whose reloader task had not yet installed its handler)."""
    import signal
    import time

    table = tmp_path / "routing.toml"
    table.write_text(GOOD_TABLE)
    for _ in range(3):  # the race was lost almost every time; three tries make sure
        with RouterProcess(
            "--no-auth",
            "--routing-table",
            str(table),
            adapters={"echo": "builtin:echo"},
            env=clean_env(),
            cwd=ROOT,
        ) as router:
            router.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "policy reloaded (SIGHUP)" not in router.log():
                assert router.proc.poll() is None, f"killed: {router.proc.returncode}"
                assert time.monotonic() < deadline, router.log()[-2000:]
                time.sleep(0.05)


def _post(port: int, body: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_deeply_nested_feedback_body_is_400_and_the_router_lives(tmp_path: Path) -> None:
    """[ATP-FEED-002] a feedback body of 8,000 ``[`` (under the 8 KiB limit) is a malformed
    body: 400, and the router goes on (json.loads raised RecursionError, which is no
    ValueError: it escaped the HTTP handler and took the whole router down)."""
    with RouterProcess(
        "--no-auth",
        "--learner",
        "bandit",
        adapters={"echo": "builtin:echo"},
        env=clean_env(),
        cwd=ROOT,
    ) as router:
        assert router.metrics_port is not None
        answer = _post(router.metrics_port, b"[" * 8000)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"JSON object" in answer
        answer = _post(router.metrics_port, b'{"decision_id": "abc", "quality": 0.5}')
        assert answer.startswith(b"HTTP/1.1 404"), answer[:200]  # still serving
        assert router.proc.poll() is None
