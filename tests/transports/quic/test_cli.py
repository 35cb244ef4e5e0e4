"""``atp serve --quic`` and ``atp send quic://`` as a person runs them: real processes,
real UDP on loopback (issue 12: "atp send quic://… streams from atp serve")."""

from __future__ import annotations

import json

from tests.router._helpers_e2e import atp, router_process


def test_send_over_quic_from_serve(cert) -> None:
    """ATP-QUIC-001, ATP-QUIC-019: `atp serve --quic` with a certificate; `atp send
    quic://` streams from it (verifying the certificate with --ca), prints the FINAL as
    JSON and exits 0; without --ca the self-signed certificate is refused in one line
    (exit 1); --text is bad usage over QUIC (exit 2)."""
    serve = ("--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off")
    quic = ("--quic", "127.0.0.1:0", "--quic-cert", cert.cert, "--quic-key", cert.key)
    with router_process(*serve, *quic) as router:
        url = router.quic_url  # the port the kernel gave it, from its "listening" line
        assert url.startswith("quic://127.0.0.1:") and not url.endswith(":0"), router.log()
        ok = atp("send", url, "--prompt", "hello over quic", "--ca", cert.cert, "--json")
        assert ok.returncode == 0, ok.stderr
        last = json.loads(ok.stdout.strip().splitlines()[-1])
        assert last["kind"] == "final" and last["content"]["ok"] is True
        refused = atp("send", url, "--prompt", "hi", "--timeout", "10")
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "certificate" in refused.stderr and "Traceback" not in refused.stderr
        bad = atp("send", url, "--prompt", "hi", "--text")
        assert bad.returncode == 2 and "QUIC" in bad.stderr


def test_quic_needs_a_certificate() -> None:
    """`atp serve --quic` without a certificate is bad usage, in one line."""
    r = atp("serve", "--no-auth", "--quic", "127.0.0.1:7443")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "certificate" in r.stderr
