"""``atp send``'s refusals say what to do (the CLI rule: errors for a person), against real
routers on loopback: a router with auth on refuses a send without a token with HTTP 401 and
the line names --token / ATP_TOKEN; a certificate the client does not trust, over wss:// and
over QUIC, is refused with the line naming --ca and --insecure. With a token or a --ca given,
the hint is not repeated (it would be wrong advice)."""

from __future__ import annotations

from pathlib import Path

from atp_proto.transports.tls import generate_dev_cert
from tests.router._helpers_e2e import atp, router_process
from tests.test_cli_errors import one_line

_SECRET = "s" * 40


def test_a_missing_token_names_the_option(tmp_path: Path) -> None:
    env = {"ATP_JWT_KEY": _SECRET}
    with router_process("--ws", "127.0.0.1:0", "--metrics", "off", env=env) as router:
        bare = one_line(atp("send", router.ws_url, "--prompt", "hi", "--timeout", "10"), 1)
        bad = one_line(
            atp("send", router.ws_url, "--prompt", "hi", "--token", "x.y.z", "--timeout", "10"), 1
        )
    assert "HTTP 401" in bare and "--token" in bare and "ATP_TOKEN" in bare
    assert "HTTP 401" in bad and "--token" not in bad  # a token was given: it is bad, not absent


def test_an_untrusted_certificate_names_ca_and_insecure(tmp_path: Path) -> None:
    cert, key, _ = generate_dev_cert(tmp_path)
    args = ("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--cert", str(cert))
    with router_process(*args, "--key", str(key), "--quic", "127.0.0.1:0") as router:
        wss = one_line(atp("send", router.ws_url, "--prompt", "hi", "--timeout", "10"), 1)
        quic_url = router.quic_url
        quic = one_line(atp("send", quic_url, "--prompt", "hi", "--timeout", "10"), 1)
        other = one_line(
            atp("send", router.ws_url, "--prompt", "hi", "--ca", __file__, "--timeout", "10"), 2
        )
    assert "TLS certificate refused" in wss and "--ca FILE" in wss and "--insecure" in wss
    assert "certificate" in quic and "--ca FILE" in quic and "--insecure" in quic
    assert "--insecure" not in other  # --ca given: its own error, no advice to add one
