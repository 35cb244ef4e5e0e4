"""``atp serve --workers 2 --learner bandit --routing-state FILE``: the learned routing
state of two real worker processes survives a restart of the fleet, whole and intact
(issue 14 item 5; atp_proto.router.routing.learner.store, worker rows merged)."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest
import trio

from atp_proto.client import FeedbackRefused, connect, feedback
from atp_proto.router.routing.learner import store
from atp_proto.router.workers import HAS_REUSEPORT
from atp_proto.testing.processes import RouterProcess, clean_env

from ._helpers_e2e import ROOT

pytestmark = pytest.mark.skipif(not HAS_REUSEPORT, reason="the OS lacks SO_REUSEPORT")

_LISTEN = re.compile(r"router listening .*?metrics=http://[^:]+:(\d+)/metrics.* worker=(\d+)")


def _fleet(state: Path) -> tuple[RouterProcess, dict[int, int]]:
    """The supervisor and each worker's metrics port (where its feedback goes)."""
    router = RouterProcess(
        "--no-auth",
        "--workers",
        "2",
        "--learner",
        "bandit",
        "--routing-state",
        str(state),
        adapters={"persona": "builtin:persona?latency_ms=1"},
        env=clean_env(),
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while len(found := _LISTEN.findall(router.log())) < 2:
        if time.monotonic() > deadline:
            router.stop()
            raise AssertionError(router.log()[-3000:])
        time.sleep(0.05)
    return router, {int(w): int(p) for p, w in found}


def _feedback_on_both(router: RouterProcess, ports: dict[int, int], each: int) -> dict[int, int]:
    """New sessions (the kernel spreads them over the workers), each asking once and
    reporting quality 0.9 to the worker that decided (the others refuse the unknown
    decision id), until each worker took at least ``each`` reports; the reports taken
    per worker."""
    taken = dict.fromkeys(ports, 0)

    async def run() -> None:
        for _ in range(200):
            if min(taken.values()) >= each:
                return
            async with connect(router.ws_url) as client:
                final = await client.ask("which adapter is best")
            decision = final.telemetry["decision_id"]
            for worker, port in ports.items():
                try:
                    took = await feedback(f"http://127.0.0.1:{port}", decision, 0.9)
                except FeedbackRefused:
                    continue
                if took.accepted:
                    taken[worker] += 1
                    break
        raise AssertionError(f"the kernel did not spread the sessions: {taken}")

    trio.run(run)
    return taken


def test_two_workers_learning_survives_a_restart_whole(tmp_path: Path) -> None:
    """Run 1: each worker takes at least 2 feedback reports; SIGTERM. The file is intact
    and holds all of them (one worker's save does not overwrite the other's; the
    supervisor folded the workers' rows into one state). Run 2: both workers load it;
    worker 0 takes one more report; after the stop the state holds them all, each
    counted once."""
    state = tmp_path / "routing.sqlite"
    router, ports = _fleet(state)
    try:
        taken = _feedback_on_both(router, ports, 2)
    finally:
        assert router.stop(timeout=20) == 0
    total = sum(taken.values())
    assert store.load(state).arms["persona"].feedback_n == total
    con = sqlite3.connect(state)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT COUNT(*) FROM worker_arms").fetchone() == (0,)
    finally:
        con.close()
    assert "routing state merged" in router.log()

    router, ports = _fleet(state)
    try:
        assert router.log().count("routing state loaded") == 2
        assert _feedback_on_both(router, {0: ports[0]}, 1) == {0: 1}
    finally:
        assert router.stop(timeout=20) == 0
    assert store.load(state).arms["persona"].feedback_n == total + 1
