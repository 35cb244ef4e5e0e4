"""Mutation tests of the router cases: for MUSTs that no other broken variant broke, a real
``atp serve`` process wrong in exactly one way per MUST
(tests/conformance/broken/mutation_variants.py) must fail the case that cites it, naming
it, while router.basic.final still passes (the variant did not merely break the router).
The reference passes every one of these cases in test_router_role.py's full runs.

Several of these found hollow cases, each strengthened (router.basic.two-streams now cites
ATP-SEQ-003, the only case whose SYN msg_seq is not 1; router.time.heartbeat checks the
reply's payload; router.flow.fragments-within-credit and an invariant for CONT;
router.json.duplicate-nested-key; router.adapter.max-streams names ATP-STREAM-008;
connection errors' close codes, ATP-ERR-002; router.frame.budget-update-from-client,
ATP-FRAME-014, which no router case cited; router.caps.stream0-data names ATP-FRAME-012;
router.budget.preflight-refused, as router.budget.tiny-token-window passed a router that
starts the work and ends it EBUDGET at the first usage report;
router.err.stream-error-spares-others, as only router.sec.sessions-isolated, naming
ATP-SEC-010, caught a router whose every stream error ends the session).
Session 8 added the group ``_EIGHT`` (and ATP-SEC-005 to the auth run) and found six
more hollow cases: router.text.json.null-payload passed a router refusing a null payload
(a FIN message's null payload must now be taken); ATP-FLOW-009 was cited by
router.basic.final only (router.flow.error-not-held: an ERROR while the answer waits for
credit); the vector frame.wu-empty names a stream never opened, which is EPROTO whatever
the frame (router.frame.wu-empty-open-stream; frame.wu-window-not-map likewise,
router.frame.wu-window-not-map-open-stream); router.flow.credit-respected and
router.flow.fragments-within-credit, both citing ATP-FLOW-013, passed a router whose
fragments are max_frame_size and never cut to the credit (router.flow.cut-to-credit);
router.seq.fragments-credit, citing ATP-FLOW-010, one that never returns a SYN's own
credit (router.flow.syn-credit-returned).
Session 9 added ``_NINE``: the vectors frame.wu-credit-0, frame.wu-credit-2-31 and
frame.wu-window-negative, on a stream never opened, passed a router taking a credit of 0
as a no-op, one answering a credit of 2^31 EWINDOW (the range checked against the window)
and one ignoring a negative window field (new router.flow.wu-credit-0-open-stream,
router.flow.wu-credit-2-31-open-stream, router.frame.wu-window-negative-open-stream);
ATP-SEQ-013, ATP-FRAME-015 and ATP-FRAME-024 had no variant, and ATP-FRAME-024's cases
sent only bytes that are no CBOR and a tag (new router.syn.payload-trailing-bytes and
router.syn.payload-duplicate-key). Two spec points decided in session 9 have theirs too:
a text qos written as an integer (ATP-JSON-018, router.text.json.qos-integer) and a qos
above 3 on stream 0 (ATP-FRAME-007, the vector frame.hb-qos-4).
Six receivers stricter than the spec (a reserved flag bit, ACK on a DATA frame, qos and
ttl on a WINDOW_UPDATE, an unknown caps feature, an unknown text flag name) or laxer (ext
on a later fragment dropped) had no variant: router.frame.qos-ttl-on-non-syn-ignored is
new (ATP-FRAME-016 was cited by a SYN-only case), and a refused CAPABILITIES of the case's
own now fails the case's requirements, not ATP-SESS-002 (router.caps.bad-limits-ignored).
The lanes (ATP-FRAME-017) and the idle timer (ATP-TIME-008) have their variants in
test_router_role.py, which runs those cases with the configuration they need. Independent faults share a router process,
each case meeting only its own: six processes in all."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from atp_proto.router.auth import issue_token

from .conftest import (
    BROKEN,
    HANDSHAKE_2S,
    ROOT,
    SECRET,
    adapter_socket,
    failures,
    router,
    run_suite,
)

#: variant: (the case that must catch it, the requirement it must name)
_PLAIN = {
    "seq-from-one": ("router.basic.two-streams", "ATP-SEQ-003"),
    "cont-never-set": ("router.flow.fragments-within-credit", "ATP-SEQ-010"),
    "credit-unchecked": ("router.flow.frame-past-credit", "ATP-FLOW-002"),
    "hb-ack-empty": ("router.time.heartbeat", "ATP-TIME-002"),
    "error-answered": ("router.err.error-on-never-opened-stream", "ATP-ERR-011"),
    "wu-never-opened-ignored": ("router.stream.wu-never-opened", "ATP-STREAM-013"),
    "json-last-key-wins": ("router.text.json.duplicate-nested-key", "ATP-JSON-017"),
    "max-streams-no-retry-after": ("router.adapter.max-streams", "ATP-STREAM-008"),
    "budget-update-taken": ("router.frame.budget-update-from-client", "ATP-FRAME-014"),
    "ws-close-normal": ("router.vector.frame.version-2", "ATP-ERR-002"),
    "float-header-truncated": ("router.text.json.float-header", "ATP-JSON-010"),
    "invalid-argument-unmapped": ("router.adapter.status-invalid-argument", "ATP-ADAPT-011"),
    "no-window-update": ("router.seq.fragments-credit", "ATP-FLOW-012"),
    "bad-window-unlimited": ("router.vector.frame.syn-window-negative", "ATP-BUDGET-008"),
    "preflight-unchecked": ("router.budget.preflight-refused", "ATP-BUDGET-002"),
}
_MORE = {
    "hb-ack-answered": ("router.time.heartbeat", "ATP-TIME-006"),
    "hb-size-unchecked": ("router.vector.frame.hb-oversized", "ATP-TIME-003"),
    "unknown-code-ignored": ("router.err.error-frame-ends-stream", "ATP-ERR-003"),
    "session-error-unknown-kept": ("router.err.stream0-error-ends-session", "ATP-ERR-007"),
    "message-size-unchecked": ("router.seq.message-too-big", "ATP-SEQ-007"),
    "session-id-not-echoed": ("router.text.basic.final", "ATP-JSON-007"),
    "wu-stream0-ignored": ("router.caps.stream0-data", "ATP-FRAME-012"),
    "data-after-fin-dropped": ("router.stream.data-after-fin", "ATP-STREAM-005"),
    "alias-reuse-refused": ("router.text.json.alias-reused", "ATP-JSON-003"),
}
#: session 8's: MUSTs no variant broke before (their own process: several share a case, or
#: a patched function, with the groups above)
_EIGHT = {
    "rst-ignored": ("router.flag.rst-ends-stream", "ATP-FLAG-003"),
    "syn-on-open-ignored": ("router.stream.syn-on-open-stream", "ATP-STREAM-004"),
    "data-never-opened-dropped": ("router.stream.data-never-opened", "ATP-STREAM-003"),
    "caps-answered-always": ("router.caps.answered-once", "ATP-SESS-010"),
    "null-payload-refused": ("router.text.json.null-payload", "ATP-JSON-012"),
    "alias-below-numeric": ("router.text.json.alias-reused", "ATP-JSON-014"),
    "wu-with-window": ("router.seq.fragments-credit", "ATP-FRAME-021"),
    "error-held-behind-credit": ("router.flow.error-not-held", "ATP-FLOW-009"),
    "stream0-data-as-heartbeat": ("router.vector.frame.data-stream0-no-hb", "ATP-FRAME-011"),
    "wu-empty-ignored": ("router.frame.wu-empty-open-stream", "ATP-FRAME-019"),
    "qos-clamped": ("router.vector.frame.qos-4", "ATP-FRAME-007"),
    "other-version-taken": ("router.caps.no-version-1", "ATP-SESS-003"),
    "versions-optional": ("router.caps.no-versions", "ATP-SESS-017"),
    "unknown-type-fatal": ("router.frame.unknown-type", "ATP-FRAME-010"),
    "unknown-ext-refused": ("router.frame.unknown-ext-keys", "ATP-EXT-001"),
    "error-without-rst-ignored": ("router.err.error-frame-ends-stream", "ATP-FRAME-022"),
    "no-cut-to-credit": ("router.flow.cut-to-credit", "ATP-FLOW-013"),
    "tiny-window-served": ("router.flow.window-too-small-refused-at-syn", "ATP-FLOW-014"),
    "syn-credit-kept": ("router.flow.syn-credit-returned", "ATP-FLOW-010"),
    "wu-bad-window-ignored": ("router.frame.wu-window-not-map-open-stream", "ATP-FRAME-020"),
    "wu-after-end-refused": ("router.flag.frames-after-end-discarded", "ATP-FLAG-004"),
    "session-id-unchecked": ("router.vector.frame.session-id-int", "ATP-EXT-010"),
    "bare-rst-never-opened-dropped": ("router.stream.rst-never-opened", "ATP-FLAG-009"),
}
#: session 9's: faults the vectors on a stream never opened let through (router.vector.
#: frame.wu-credit-0, wu-credit-2-31 and wu-window-negative pass these variants: a stream
#: never opened is EPROTO whatever the frame), and MUSTs no variant broke before
_NINE = {
    "wu-credit-0-ignored": ("router.flow.wu-credit-0-open-stream", "ATP-FLOW-004"),
    "wu-credit-range-stateful": ("router.flow.wu-credit-2-31-open-stream", "ATP-FRAME-023"),
    "wu-window-negative-ignored": ("router.frame.wu-window-negative-open-stream", "ATP-FRAME-020"),
    "fragments-cap-eproto": ("router.seq.too-many-fragments", "ATP-SEQ-013"),
    "error-without-message-taken": ("router.vector.frame.error-without-message", "ATP-FRAME-015"),
    "syn-trailing-bytes-taken": ("router.syn.payload-trailing-bytes", "ATP-FRAME-024"),
    "syn-duplicate-key-taken": ("router.syn.payload-duplicate-key", "ATP-FRAME-024"),
    "text-qos-integer-taken": ("router.text.json.qos-integer", "ATP-JSON-018"),
    "stream0-qos-ignored": ("router.vector.frame.hb-qos-4", "ATP-FRAME-007"),
    # configured 2 s and told so (--handshake-timeout 2), it keeps the connection 10 s
    "handshake-timeout-fixed": ("router.tls.handshake-timeout", "ATP-WS-014"),
    # receivers stricter than the spec, and one laxer
    "reserved-flag-refused": ("router.flag.reserved-bit", "ATP-FLAG-001"),
    "ack-on-data-refused": ("router.flag.more-ack-hb-on-syn", "ATP-FLAG-002"),
    "non-syn-qos-refused": ("router.frame.qos-ttl-on-non-syn-ignored", "ATP-FRAME-016"),
    "unknown-feature-refused": ("router.caps.bad-limits-ignored", "ATP-EXT-003"),
    "unknown-flag-name-refused": ("router.text.json.minimal-syn", "ATP-JSON-005"),
    "ext-on-later-fragment-dropped": (
        "router.seq.ext-on-later-fragment-out-of-sequence",
        "ATP-SEQ-006",
    ),
}
#: alone in its process: every stream error of the session would meet it
_FATAL = {"stream-error-ends-session": ("router.err.stream-error-spares-others", "ATP-ERR-005")}
_AUTH = {
    "task-types-ignored": ("router.auth.task-type-refused", "ATP-SEC-004"),
    "lane-not-capped": ("router.auth.lane-capped", "ATP-SEC-015"),
    "missing-token-anonymous": ("router.auth.no-token", "ATP-SEC-001"),
    "alias-not-echoed": ("router.text.json.seed-syn", "ATP-JSON-016"),
    "alg-none-accepted": ("router.auth.alg-none", "ATP-SEC-002"),
    "refusal-echoes-token": ("router.auth.no-secret-in-refusal", "ATP-SEC-005"),
}


def _caught(report: dict, caught: dict[str, tuple[str, str]]) -> None:
    verdicts = {c["id"]: (c["verdict"], c["violated"]) for c in report["cases"]}
    assert verdicts["router.basic.final"][0] == "PASS", verdicts["router.basic.final"]
    failed = {c["id"]: c for c in failures(report)}
    for variant, (case, want_id) in caught.items():
        assert case in failed, (variant, case, verdicts.get(case))
        assert want_id in failed[case]["violated"], (variant, failed[case])


@pytest.mark.parametrize(
    "group",
    [_PLAIN, _MORE, _FATAL, _EIGHT, _NINE],
    ids=["plain", "more", "fatal", "eight", "nine"],
)
def test_broken_routers_are_caught(group: dict[str, tuple[str, str]]) -> None:
    runs: list[str] = ["--run", "router.basic.final"]
    for case, _ in group.values():
        runs += ["--run", case]
    with (
        adapter_socket() as conf,
        router(
            variant="+".join(group),
            adapters={"conf": f"grpc://127.0.0.1:{conf.getsockname()[1]}"},
            config_toml=HANDSHAKE_2S,
        ) as r,
    ):
        code, report, err = run_suite(
            "--role", "router", "--target", r.url, "--level", "L3", "--handshake-timeout", "2",
            *runs, adapter=conf, fail_fast=True,
        )  # fmt: skip
    assert code == 1, err[-1500:]
    _caught(report, group)


def test_broken_auth_is_caught(secret_file: Path) -> None:
    """Auth on: the token's claims ignored, and a handshake without a token served."""
    token = issue_token(SECRET.encode(), ttl_s=600)
    limited = issue_token(SECRET.encode(), ttl_s=600, task_types=["qa"], max_qos="bronze")
    runs: list[str] = ["--run", "router.basic.final"]
    for case, _ in _AUTH.values():
        runs += ["--run", case]
    with router(
        variant="+".join(_AUTH), adapters={"persona": "builtin:persona"}, key_file=secret_file
    ) as r:
        code, report, err = run_suite(
            "--role", "router", "--target", r.url, "--level", "L2", "--token", token,
            "--limited-token", limited, *runs, fail_fast=True,
        )  # fmt: skip
    assert code == 1, err[-1500:]
    assert token not in err
    _caught(report, _AUTH)


#: the client testee broken in one way: (the case that must catch it, the requirement)
_CLIENT = {
    "client-hb-ack-empty": ("client.basic.three-streams", "ATP-TIME-002"),
    "client-syn-ignored": ("client.stream.syn-from-router", "ATP-STREAM-006"),
    "client-budget-update-refused": ("client.frame.budget-update", "ATP-FRAME-014"),
    "client-drain-ignored": ("client.session.draining", "ATP-SESS-006"),
    "client-cont-never-set": ("client.flow.credit-respected", "ATP-SEQ-010"),
}


def test_broken_client_is_caught() -> None:
    """The Python client testee with five independent faults (one client process per case,
    each with all five), each failing the client case citing it, naming only its ID (the
    client passes unbroken: test_client_codec_roles.py). client.frame.budget-update passed
    a client that answered the BUDGET_UPDATE with EPROTO, client.flow.credit-respected one
    that sent its fragments without CONT: both checks were added."""
    cmd = (
        f"env PYTHONPATH={BROKEN}:{ROOT} {sys.executable} {BROKEN / 'client_variant.py'} "
        f"{'+'.join(_CLIENT)} {{url}} --streams {{streams}} --prompt-file {{prompt_file}} "
        "--ttl {ttl}"
    )
    runs = [a for case, _ in _CLIENT.values() for a in ("--run", case)]
    code, report, _ = run_suite("--role", "client", "--exec", cmd, *runs, "--level", "L2")
    assert code == 1
    failed = {c["id"]: c for c in failures(report)}
    assert set(failed) == {case for case, _ in _CLIENT.values()}, failed
    for variant, (case, want_id) in _CLIENT.items():
        assert failed[case]["violated"] == [want_id], (variant, failed[case])


#: session 9's: sender rules every client frame meets (both faults in one client: the one
#: case they meet must name both)
_CLIENT_SENDER = {
    "client-syn-frag-1": "ATP-STREAM-001",
    "client-reserved-flag-set": "ATP-FLAG-001",
}


def test_broken_client_sender_is_caught() -> None:
    """A client whose SYNs carry frag_seq 1 and whose DATA frames carry the reserved flag
    bit 0x80 fails client.basic.three-streams naming both rules (the client invariants)."""
    cmd = (
        f"env PYTHONPATH={BROKEN}:{ROOT} {sys.executable} {BROKEN / 'client_variant.py'} "
        f"{'+'.join(_CLIENT_SENDER)} {{url}} --streams {{streams}}"
    )
    code, report, _ = run_suite(
        "--role", "client", "--exec", cmd, "--run", "client.basic.three-streams"
    )
    assert code == 1
    (failed,) = failures(report)
    assert failed["id"] == "client.basic.three-streams", failed
    assert set(_CLIENT_SENDER.values()) <= set(failed["violated"]), failed
