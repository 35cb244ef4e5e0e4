"""The router role's cases of conformance/scenarios/router-gaps.yaml and the handshake and
shedding cases, against real routers: the reference passes them where they need a
configuration of their own (two scripted adapters and no learner for ``router.pair.*``,
auth on and a small session limit for ``router.handshake.*``, one stream at a time for
``router.lanes.shed-order``), and broken variants — real ``atp serve`` processes wrong in
one way (tests/conformance/broken/gaps_variants.py) — are caught with the requirement ID
they break. The gap cases that need one adapter run in test_router_role.py's full run."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from atp_proto.router.auth import issue_token
from atp_proto.testing import RouterProcess

from .conftest import SECRET, adapter_socket, failures, router, run_suite

#: small enough for router.handshake.session-limit to open them all
MAX_SESSIONS = 8
_SESSIONS = f"[router]\nmax_sessions = {MAX_SESSIONS}\n"
#: one stream at a time and a queue of 4: 4 streams per lane put it under pressure
_PRESSURE = "[admission]\nmin_limit = 1\ninitial_limit = 1\nmax_limit = 1\nmax_queue = 4\n"


@contextmanager
def _pair_router(
    variant: str | None = None, key_file: Path | None = None
) -> Iterator[tuple[RouterProcess, tuple[socket.socket, socket.socket]]]:
    """A router with the two scripted adapters (conf, conf2), and their listening sockets
    (``run_suite(adapter=...)``: held from before the router starts, no port race)."""
    with (
        _pair_sockets() as (s1, s2),
        router(
            variant=variant,
            adapters=_pair_urls(s1, s2),
            key_file=key_file,
            config_toml=_SESSIONS,
        ) as r,
    ):
        yield r, (s1, s2)


@contextmanager
def _pair_sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    with adapter_socket() as s1, adapter_socket() as s2:
        yield s1, s2


def _pair_urls(s1: socket.socket, s2: socket.socket) -> dict[str, str]:
    return {
        "conf": f"grpc://127.0.0.1:{s1.getsockname()[1]}",
        "conf2": f"grpc://127.0.0.1:{s2.getsockname()[1]}",
    }


def _verdicts(report: dict) -> dict[str, tuple[str, str]]:
    return {
        c["id"]: (c["verdict"], c["message"]) for c in report["cases"] if c["verdict"] != "SKIPPED"
    }


def test_reference_router_passes_the_pair_and_handshake_cases(secret_file: Path) -> None:
    """[ATP-ADAPT-005, ATP-STRAT-005, ATP-STRAT-006, ATP-BUDGET-004, ATP-BUDGET-009,
    ATP-BUDGET-010, ATP-ADAPT-014, ATP-WS-007, ATP-WS-008, ATP-LIMIT-003] auth on, two
    scripted adapters, max_sessions 8: every pair and handshake case passes, binary and
    text."""
    token = issue_token(SECRET.encode(), ttl_s=600)
    with _pair_router(key_file=secret_file) as (r, listen):
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L3",
            "--token",
            token,
            "--session-limit",
            str(MAX_SESSIONS),
            "--run",
            "*.pair.*",
            "--run",
            "router.handshake.*",
            "--skip",
            "router.pair.gold-floor",  # a learning router: test_gold_quality_floor_...
            adapter=listen,
        )
    got = _verdicts(report)
    assert code == 0, (got, err[-1500:])
    assert {v for v, _ in got.values()} == {"PASS"}, {
        k: v for k, v in got.items() if v[0] != "PASS"
    }
    assert {
        "router.pair.escalation",
        "router.text.pair.escalation",
        "router.pair.hedge",
        "router.pair.retry-budget",
        "router.handshake.subprotocol-bearer",
        "router.handshake.session-limit",
    } <= set(got)
    assert len(got) == 15, sorted(got)
    assert token not in err


@pytest.mark.parametrize("variant", [None, "bronze-starves-gold"])
def test_shedding_by_lane_under_pressure(variant: str | None) -> None:
    """[ATP-ADAPT-002, ATP-ERR-004] one stream at a time, a queue of 4, 4 streams per lane:
    the reference sheds bronze and silver, never gold while lower lanes wait; a router
    whose every stream waits as bronze sheds gold ahead of queued bronze: caught."""
    with (
        adapter_socket() as conf,
        router(
            variant=variant,
            adapters={"conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}"},
            config_toml=_PRESSURE,
        ) as r,
    ):
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L3",
            "--pressure",
            "4",
            "--run",
            "router.lanes.shed-order",
            "--run",
            "router.pair.max-parallel",
            "--encoding",
            "binary",
            adapter=conf,
        )
    (case,) = [c for c in report["cases"] if c["id"] == "router.lanes.shed-order"]
    if variant is None:
        assert code == 0 and case["verdict"] == "PASS", (case["message"], err[-1000:])
        assert "'gold': 0" in case["message"]
        # one --adapter-listen address: a pair case says what it needs
        (pair,) = [c for c in report["cases"] if c["id"] == "router.pair.max-parallel"]
        assert pair["verdict"] == "UNSUPPORTED"
        assert "--adapter-listen HOST:PORT,HOST:PORT" in pair["message"]
    else:
        assert code == 1 and case["verdict"] == "FAIL", case
        assert case["violated"] == ["ATP-ADAPT-002"]


@pytest.mark.parametrize("variant", [None, "gold-random-first"])
def test_gold_quality_floor_of_a_learning_router(variant: str | None) -> None:
    """[ATP-FEED-006] the bandit learner, taught that conf2 is bad: gold never tries it
    first; a learner whose gold lane puts any adapter first is caught."""
    with (
        _pair_sockets() as pair,
        router(
            "--learner",
            "bandit",
            variant=variant,
            adapters=_pair_urls(*pair),
        ) as r,
    ):
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L3",
            "--http-url",
            f"http://127.0.0.1:{r.metrics_port}",
            "--run",
            "router.pair.gold-floor",
            adapter=pair,
        )
    (case,) = [c for c in report["cases"] if c["id"] == "router.pair.gold-floor"]
    if variant is None:
        assert code == 0 and case["verdict"] == "PASS", (case["message"], err[-1000:])
    else:
        assert code == 1 and case["verdict"] == "FAIL", case
        assert case["violated"] == ["ATP-FEED-006"]


#: independent faults, several to a router process (each case meets only its own)
_SEVERAL = (
    "text-credit-cbor+no-usage-charge+meta-not-passed+unoffered-subprotocol+no-retry-after"
    "+ignore-max-parallel"
)


@pytest.mark.parametrize(
    ("variants", "caught"),
    [
        (
            _SEVERAL,
            {
                "router.text.flow.text-credit-utf8": "ATP-FLOW-008",
                "router.budget.usage-charged": "ATP-BUDGET-003",
                "router.adapter.meta-passed": "ATP-SEC-014",
                "router.handshake.subprotocol-atp": "ATP-WS-008",
                "router.handshake.session-limit": "ATP-LIMIT-003",
                "router.pair.max-parallel": "ATP-BUDGET-004",
            },
        ),
        (
            "weaker-challenger",
            {
                "router.pair.escalation-not-weaker": "ATP-STRAT-005",
                "router.pair.escalation": "ATP-ADAPT-005",
            },
        ),
        ("hedge-loser-runs", {"router.pair.hedge": "ATP-STRAT-006"}),
        ("hedge-unbounded", {"router.pair.hedge": "ATP-STRAT-006"}),
    ],
)
def test_broken_routers_are_caught_by_the_gap_cases(variants: str, caught: dict[str, str]) -> None:
    """Each variant's case fails and names the requirement its fault breaks (the faults
    of one process touch different cases: each case meets only its own)."""
    with _pair_router(variants) as (r, listen):
        args: list[str] = []
        for case in caught:
            args += ["--run", case]
        code, report, _ = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L3",
            "--session-limit",
            str(MAX_SESSIONS),
            *args,
            adapter=listen,
        )
    assert code == 1, _verdicts(report)
    failed = {c["id"]: c for c in failures(report)}
    for case, want_id in caught.items():
        assert case in failed, (case, _verdicts(report))
        assert want_id in failed[case]["violated"], failed[case]
