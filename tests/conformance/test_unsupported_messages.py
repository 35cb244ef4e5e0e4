"""An UNSUPPORTED case says what the run lacks without claiming what the router under test
is: ``router.auth.*`` (and the QUIC binding's auth cases) without ``--token`` said "the
router under test has auth on" against a router started with ``--no-auth``. They say
"needs --token (a router with auth on)" now, as the handshake and HTTP cases do."""

from __future__ import annotations

from conformance.model import Verdict
from conformance.roles import RunContext, router, router_quic


async def test_auth_cases_without_a_token_do_not_claim_the_router_has_auth_on() -> None:
    ws = RunContext(target="ws://127.0.0.1:9/ws", options={})  # never connected to
    quic = RunContext(target="quic://127.0.0.1:9", options={})
    auth_ws = [s for s in router.cases({}) if s.id.startswith("router.auth.")]
    auth_quic = [s for s in router_quic.cases({}) if s.id.startswith(router_quic.PREFIX + "auth.")]
    assert auth_ws and auth_quic
    said: set[str] = set()
    for spec, ctx in [(s, ws) for s in auth_ws] + [(s, quic) for s in auth_quic]:
        got = await router.run(spec, ctx)
        assert got.verdict == Verdict.UNSUPPORTED, (spec.id, got.verdict, got.message)
        assert got.message.startswith("needs --"), (spec.id, got.message)
        assert "under test" not in got.message, (spec.id, got.message)
        said.add(got.message)
    assert "needs --token (a router with auth on)" in said
