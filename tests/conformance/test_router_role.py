"""The router role against real routers: the reference passes every case at every level
(binary and text, auth on for L2, the scripted adapter for the router-to-adapter cases),
and each deliberately broken variant — a real ``atp serve`` process wrong in one way — is
caught with the requirement ID it breaks in report.json (issue 11 items 5 and 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_proto.router.auth import issue_token

from .conftest import (
    DENIED_META,
    HANDSHAKE_2S,
    POLICY,
    SECRET,
    adapter_socket,
    failures,
    router,
    run_suite,
)


def _not_passed(report: dict) -> list[tuple[str, str, str]]:
    return [
        (c["id"], c["verdict"], c["message"])
        for c in report["cases"]
        if c["verdict"] not in ("PASS",)
    ]


def test_reference_router_passes_every_case_with_the_scripted_adapter() -> None:
    """[ATP-ADAPT-009, ATP-ADAPT-011, ATP-ADAPT-012] L3, binary and text, --adapter-listen:
    100% PASS except the auth cases, UNSUPPORTED without --token (the next test). The
    router learns (bandit, feedback on its HTTP port) and asks the example policy
    [ATP-STRAT-001, ATP-FEED-002, ATP-SEC-016]."""
    with (
        adapter_socket() as conf,
        router(
            "--learner",
            "bandit",
            "--policy",
            str(POLICY),
            adapters={"conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}"},
            config_toml=HANDSHAKE_2S,
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
            "--denied-meta",
            DENIED_META,
            "--handshake-timeout",
            "2",
            "--skip",
            "router.auth.*",
            "--skip",
            "router.feedback.needs-token",  # auth on: test_router_role_strategy.py
            "--skip",
            "*.policy.service-unreachable",  # policy service down: test_router_role_strategy.py
            "--skip",
            "router.lanes.*",  # needs a router at its limit: test_lanes_at_the_concurrency_limit
            "--skip",
            "router.time.idle-timeout",  # 60 s here: test_idle_timeout_closes_a_silent_session
            "--skip",
            "router.time.heartbeats-keep-alive",  # likewise
            "--skip",
            "*.pair.*",  # two scripted adapters, no learner: test_router_gaps.py
            "--skip",
            "router.handshake.subprotocol-bearer",  # auth on: test_router_gaps.py
            "--skip",
            "router.handshake.session-limit",  # a small max_sessions: test_router_gaps.py
            "--skip",
            "router.quota.*",  # a configured tenant quota: test_router_quota.py
            adapter=conf,
        )
    assert code == 0, (err[-2000:], report and _not_passed(report))
    assert {c["verdict"] for c in report["cases"]} == {"PASS", "SKIPPED"}
    assert sum(c["verdict"] == "PASS" for c in report["cases"]) >= 110
    passed = {c["id"] for c in report["cases"] if c["verdict"] == "PASS"}
    assert {
        "router.strategy.quorum-not-reached",
        "router.feedback.accepted",
        "router.policy.denied",
        "router.tls.handshake-timeout",
    } <= passed


def test_reference_router_with_auth_passes_l2(secret_file: Path) -> None:
    """[ATP-SEC-001, ATP-SEC-002, ATP-SEC-003, ATP-WS-006] auth on: every L2 case passes,
    the token ones included (an expired token refused)."""
    token = issue_token(SECRET.encode(), ttl_s=600)
    expired = issue_token(SECRET.encode(), ttl_s=-120)
    limited = issue_token(SECRET.encode(), ttl_s=600, task_types=["qa"], max_qos="bronze")
    with router(
        "--policy",
        str(POLICY),
        adapters={"persona": "builtin:persona"},
        key_file=secret_file,
        config_toml=HANDSHAKE_2S,
    ) as r:
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L2",
            "--token",
            token,
            "--expired-token",
            expired,
            "--limited-token",
            limited,
            "--denied-meta",
            DENIED_META,
            "--handshake-timeout",
            "2",
            "--skip",
            "*.policy.service-unreachable",  # policy service down: test_router_role_strategy.py
            "--skip",
            "router.time.idle-timeout",  # 60 s here: test_idle_timeout_closes_a_silent_session
            "--skip",
            "router.time.heartbeats-keep-alive",  # likewise
            "--skip",
            "router.handshake.session-limit",  # a small max_sessions: test_router_gaps.py
        )
    assert code == 0, (err[-2000:], report and _not_passed(report))
    not_passed = {c["id"]: c["verdict"] for c in report["cases"] if c["verdict"] != "PASS"}
    report_msgs = {c["id"]: c["message"] for c in report["cases"]}
    # only the cases that need the scripted adapter, and those above L2
    assert all(
        (v == "UNSUPPORTED" and "needs --adapter-listen" in report_msgs[k])
        or (v == "SKIPPED" and ("above --level" in report_msgs[k] or "--skip" in report_msgs[k]))
        for k, v in not_passed.items()
    ), not_passed
    assert token not in err
    assert {"router.auth.task-type-refused", "router.auth.lane-capped"} <= {
        c["id"] for c in report["cases"] if c["verdict"] == "PASS"
    }


# ---------------------------------------------------------------- broken variants

#: variant: (the requirement, the case). Grouped so that no fault meets another's case:
#: one router process per group (the three that rewrite a FINAL's numbering or flags meet
#: every FINAL, so each is alone).
_PLAIN = {
    "ignore-credit": ("ATP-FLOW-001", "router.flow.credit-respected"),
    "reuse-seq": ("ATP-SEQ-001", "router.basic.final"),
    "skip-seq": ("ATP-SEQ-001", "router.basic.final"),
    "drop-fin": ("ATP-STREAM-011", "router.basic.final"),
    "drop-telemetry": ("ATP-BUDGET-006", "router.basic.telemetry"),
    "wrong-error-code": ("ATP-SEQ-004", "router.seq.skip"),
    "no-error-answer": ("ATP-FRAME-003", "router.vector.frame.version-2"),
}
_PLAIN_GROUPS = [
    ("ignore-credit", "wrong-error-code"),
    ("drop-telemetry", "no-error-answer"),
    ("reuse-seq",),
    ("skip-seq",),
    ("drop-fin",),
]


@pytest.mark.parametrize("group", _PLAIN_GROUPS, ids="+".join)
def test_broken_router_is_caught(group: tuple[str, ...]) -> None:
    """Each variant fails its case with the requirement it breaks, and the run exits 1."""
    runs = [a for v in group for a in ("--run", _PLAIN[v][1])]
    with router(variant="+".join(group), adapters={"persona": "builtin:persona"}) as r:
        code, report, _ = run_suite(
            "--role", "router", "--target", r.url, "--level", "L2", "--encoding", "binary",
            *runs,
        )  # fmt: skip
    assert code == 1
    failed = {c["id"]: c for c in failures(report)}
    for variant in group:
        want_id, case = _PLAIN[variant]
        assert case in failed, (variant, sorted(failed))
        assert want_id in failed[case]["violated"], (variant, failed[case])
    assert {_PLAIN[v][1] for v in group} == set(failed), failed


def test_router_accepting_an_expired_token_is_caught(secret_file: Path) -> None:
    token = issue_token(SECRET.encode(), ttl_s=600)
    expired = issue_token(SECRET.encode(), ttl_s=-120)
    with router(
        variant="accept-expired", adapters={"persona": "builtin:persona"}, key_file=secret_file
    ) as r:
        code, report, _ = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L2",
            "--token",
            token,
            "--expired-token",
            expired,
            "--run",
            "router.auth.*",
        )
    assert code == 1
    failed = {c["id"]: c for c in failures(report)}
    assert set(failed) == {"router.auth.expired-token"}, failed
    assert failed["router.auth.expired-token"]["violated"] == ["ATP-SEC-003"]


#: (variant, case, requirement) per router process: no-decision-id rewrites every FINAL's
#: telemetry, so it is alone; the others meet none of each other's cases
_ADAPTER_GROUPS = [
    (
        ("no-cancel-on-reset", "router.adapter.cancel-on-rst", "ATP-ADAPT-009"),
        ("hang-on-stall", "router.adapter.stall-ttl", "ATP-ADAPT-012"),
        ("quorum-of-one", "router.strategy.quorum-not-reached", "ATP-STRAT-002"),
        ("ignore-comparator", "router.strategy.comparator-no-key", "ATP-STRAT-003"),
    ),
    (("no-decision-id", "router.strategy.telemetry", "ATP-FEED-001"),),
]


@pytest.mark.parametrize("group", _ADAPTER_GROUPS, ids=lambda g: "+".join(v for v, _, _ in g))
def test_broken_router_to_adapter_is_caught(group: tuple[tuple[str, str, str], ...]) -> None:
    runs = [a for _, case, _ in group for a in ("--run", case)]
    with (
        adapter_socket() as conf,
        router(
            variant="+".join(v for v, _, _ in group),
            adapters={"conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}"},
        ) as r,
    ):
        code, report, _ = run_suite(
            "--role", "router", "--target", r.url, "--level", "L3", "--encoding", "binary",
            *runs, adapter=conf,
        )  # fmt: skip
    assert code == 1
    failed = {c["id"]: c for c in failures(report)}
    for variant, case, want_id in group:
        assert case in failed, (variant, sorted(failed))
        assert want_id in failed[case]["violated"], (variant, failed[case])
    assert {case for _, case, _ in group} == set(failed), failed


#: one stream at a time, so that lanes decide who goes next
_LIMIT_ONE = "[admission]\nmin_limit = 1\ninitial_limit = 1\nmax_limit = 1\n"


@pytest.mark.parametrize("variant", [None, "bronze-starves-gold", "qos-zero-bronze"])
def test_lanes_at_the_concurrency_limit(variant: str | None) -> None:
    """[ATP-ADAPT-001, ATP-FRAME-017] the reference admits gold ahead of queued bronze, and
    a stream of qos 0 as silver; FIFO is caught, and so is qos 0 run as bronze."""
    with (
        adapter_socket() as conf,
        router(
            variant=variant,
            adapters={"conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}"},
            config_toml=_LIMIT_ONE,
        ) as r,
    ):
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L2",
            "--run",
            "router.lanes.gold-not-starved",
            adapter=conf,
        )
    (case,) = [c for c in report["cases"] if c["id"] == "router.lanes.gold-not-starved"]
    if variant is None:
        assert code == 0 and case["verdict"] == "PASS", (case["message"], err[-1000:])
    else:
        want = "ATP-ADAPT-001" if variant == "bronze-starves-gold" else "ATP-FRAME-017"
        assert code == 1 and case["verdict"] == "FAIL" and case["violated"] == [want], case


@pytest.mark.parametrize("variant", [None, "hb-not-activity"])
def test_idle_timeout_closes_a_silent_session(variant: str | None) -> None:
    """[ATP-TIME-004, ATP-TIME-008] with idle_timeout_ms 1500 the cases run (UNSUPPORTED
    above 10 s): a silent session is closed, one that sends only heartbeats is kept; a
    router whose idle timer only streams' frames restart is caught."""
    with router(
        variant=variant,
        config_toml="[limits]\nidle_timeout_ms = 1500\n",
        adapters={"persona": "builtin:persona"},
    ) as r:
        code, report, err = run_suite(
            "--role", "router", "--target", r.url, "--run", "router.time.idle-timeout",
            "--run", "router.time.heartbeats-keep-alive",
        )  # fmt: skip
    got = {c["id"]: c for c in report["cases"] if c["verdict"] != "SKIPPED"}
    case, beats = got["router.time.idle-timeout"], got["router.time.heartbeats-keep-alive"]
    assert case["verdict"] == "PASS", (case["message"], err[-800:])
    assert case["duration_ms"] / 1000 > 1.4  # not before the idle timeout
    if variant is None:
        assert code == 0 and beats["verdict"] == "PASS", (beats["message"], err[-800:])
        assert beats["duration_ms"] / 1000 > 2.9  # six heartbeats, 0.5 s apart
    else:
        assert code == 1 and beats["verdict"] == "FAIL", beats
        assert beats["violated"] == ["ATP-TIME-008"], beats
