"""The router cases of the spec points the independent client found unclear
(examples/node-client/README.md, "Where the spec was unclear"): the reference passes each
(its full run: test_router_role.py), and a real ``atp serve`` broken back to the old
reading (tests/conformance/broken/specgaps_variants.py) is caught with the requirement it
breaks. One router process per variant, one case each: a few seconds apiece."""

from __future__ import annotations

import sys

import pytest

from .conftest import BROKEN, ROOT, failures, router, run_suite, violated_ids

#: variant: (the requirement it breaks, the case that catches it, encoding)
_CAUGHT = {
    "credit-over-range-ewindow": (
        "ATP-FLOW-004",
        "router.vector.frame.wu-credit-2-31",
        "binary",
    ),
    "meta-not-map-ignored": ("ATP-FRAME-025", "router.text.syn.meta-not-map", "text"),
    "etoobig-before-eproto": (
        "ATP-WS-001",
        "router.ws.message-ends-inside-oversized-frame",
        "binary",
    ),
    "unknown-alias-takes-id": (
        "ATP-JSON-013",
        "router.text.json.unknown-alias-no-id",
        "text",
    ),
    "small-message-size-ignored": (
        "ATP-LIMIT-006",
        "router.limit.answer-over-client-message-size",
        "binary",
    ),
    "refused-syn-id-free": ("ATP-STREAM-002", "router.stream.refused-syn-id-used-qos", "binary"),
}


@pytest.mark.parametrize("variant", sorted(_CAUGHT))
def test_reference_passes_and_broken_variant_is_caught(variant: str) -> None:
    """The case passes against the reference and fails against the variant, naming the
    requirement; the run against the variant exits 1."""
    want_id, case, encoding = _CAUGHT[variant]
    args = ("--role", "router", "--level", "L3", "--encoding", encoding, "--run", case)
    with router(adapters={"persona": "builtin:persona"}) as r:
        code, report, err = run_suite(*args, "--target", r.url)
    assert code == 0, (err[-2000:], failures(report))
    assert [c["verdict"] for c in report["cases"] if c["id"] == case] == ["PASS"]
    with router(variant=variant, adapters={"persona": "builtin:persona"}) as r:
        code, report, _ = run_suite(*args, "--target", r.url)
    assert code == 1
    failed = {c["id"]: c for c in failures(report)}
    assert case in failed, sorted(failed)
    assert want_id in failed[case]["violated"], failed[case]
    assert want_id in violated_ids(report)


#: the client side: (the requirement it breaks, the case that catches it)
_CLIENT_CAUGHT = {
    "credit-over-range-ewindow": ("ATP-FLOW-004", "client.flow.credit-out-of-range"),
    "etoobig-before-eproto": ("ATP-WS-001", "client.ws.message-ends-inside-oversized-frame"),
}


@pytest.mark.parametrize("variant", sorted(_CLIENT_CAUGHT))
def test_broken_client_is_caught(variant: str) -> None:
    """The Python client testee with the old answer fails the client case, naming the
    requirement (it passes unbroken: test_client_codec_roles.py's full run)."""
    want_id, case = _CLIENT_CAUGHT[variant]
    cmd = (
        f"env PYTHONPATH={BROKEN}:{ROOT} {sys.executable} {BROKEN / 'client_variant.py'} "
        f"{variant} {{url}} --streams {{streams}}"
    )
    code, report, _ = run_suite("--role", "client", "--exec", cmd, "--run", case, "--level", "L2")
    assert code == 1
    (failed,) = failures(report)
    assert failed["id"] == case and want_id in failed["violated"], failed
