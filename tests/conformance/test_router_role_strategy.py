"""The router role's cases that need a router configured one particular way: a policy
service that does not answer (fail closed), feedback with auth on, and wss:// (the
handshake timeout covering TLS). The reference passes each (issue 11 item 5)."""

from __future__ import annotations

from pathlib import Path

from atp_proto.router.auth import issue_token
from atp_proto.transports.tls import generate_dev_cert

from .conftest import HANDSHAKE_2S, SECRET, refused_port, router, run_suite


def _verdicts(report: dict) -> dict[str, tuple[str, str]]:
    return {
        c["id"]: (c["verdict"], c["message"]) for c in report["cases"] if c["verdict"] != "SKIPPED"
    }


def test_policy_service_down_fails_closed() -> None:
    """[ATP-SEC-017] an OPA URL nobody answers: EAGENTDOWN with retry_after_ms."""
    with (
        refused_port() as opa_port,
        router(
            "--opa-url", f"http://127.0.0.1:{opa_port}", adapters={"persona": "builtin:persona"}
        ) as r,
    ):
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L2",
            "--policy-unreachable",
            "--run",
            "*.policy.service-unreachable",
        )
    got = _verdicts(report)
    assert code == 0, (got, err[-1000:])
    assert set(got) == {
        "router.policy.service-unreachable",
        "router.text.policy.service-unreachable",
    }
    assert {v for v, _ in got.values()} == {"PASS"}, got


def test_feedback_with_auth_on(secret_file: Path) -> None:
    """[ATP-FEED-002, ATP-FEED-003, ATP-FEED-004] feedback needs the token; the run's own
    token's reports are taken once, unknown ids are 404."""
    token = issue_token(SECRET.encode(), ttl_s=600)
    with router(
        "--learner", "bandit", adapters={"persona": "builtin:persona"}, key_file=secret_file
    ) as r:
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L3",
            "--token",
            token,
            "--http-url",
            f"http://127.0.0.1:{r.metrics_port}",
            "--run",
            "router.feedback.*",
        )
    got = _verdicts(report)
    assert code == 0, (got, err[-1000:])
    assert len(got) == 4 and {v for v, _ in got.values()} == {"PASS"}, got
    assert token not in err


def test_feedback_without_a_learner_is_unsupported() -> None:
    """A router whose learner takes no feedback answers 409: the cases say UNSUPPORTED."""
    with router(adapters={"persona": "builtin:persona"}) as r:
        code, report, _ = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--level",
            "L3",
            "--http-url",
            f"http://127.0.0.1:{r.metrics_port}",
            "--run",
            "router.feedback.accepted",
        )
    got = _verdicts(report)
    assert code == 0
    assert got["router.feedback.accepted"][0] == "UNSUPPORTED", got


def test_wss_handshake_timeout_covers_tls(tmp_path: Path) -> None:
    """[ATP-WS-014] over wss://, a connection that never finishes TLS is closed by the
    handshake timeout (2 s here); a normal stream still runs over TLS."""
    cert, key, _ = generate_dev_cert(tmp_path)
    with router(
        "--cert",
        str(cert),
        "--key",
        str(key),
        adapters={"persona": "builtin:persona"},
        config_toml=HANDSHAKE_2S,
    ) as r:
        assert r.url.startswith("wss://")
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--insecure",
            "--encoding",
            "binary",
            "--handshake-timeout",
            "2",
            "--run",
            "router.tls.handshake-timeout",
            "--run",
            "router.basic.final",
        )
    got = _verdicts(report)
    assert code == 0, (got, err[-1000:])
    assert {v for v, _ in got.values()} == {"PASS"}, got
    (case,) = [c for c in report["cases"] if c["id"] == "router.tls.handshake-timeout"]
    assert 1.5 < case["duration_ms"] / 1000 < 8  # closed by the timeout, not at once


def test_wss_cases_trust_the_ca_given(tmp_path: Path) -> None:
    """[ATP-WS-008, ATP-WS-013] over wss:// with ``--ca`` (not --insecure), the cases that
    speak the upgrade by hand trust that CA as the session driver does (they used the
    system's trust store and ended in a harness error against a dev certificate)."""
    cert, key, _ = generate_dev_cert(tmp_path)
    with router(
        "--cert", str(cert), "--key", str(key), adapters={"persona": "builtin:persona"}
    ) as r:
        code, report, err = run_suite(
            "--role",
            "router",
            "--target",
            r.url,
            "--ca",
            str(cert),
            "--encoding",
            "binary",
            "--run",
            "router.handshake.subprotocol-atp",
            "--run",
            "router.basic.final",
        )
    got = _verdicts(report)
    assert code == 0, (got, err[-1000:])
    assert set(got) == {"router.handshake.subprotocol-atp", "router.basic.final"}, got
    assert {v for v, _ in got.values()} == {"PASS"}, got
