"""``wss://`` end to end (issue 12, TLS): ``atp serve --dev-cert`` and ``atp send --ca`` as
subprocesses; an independent client (the ``websockets`` package with its own ssl
context); certificate verification refused by default and accepted with ``--insecure``;
the operator endpoints over https; bad certificate files refused in one line; and, in
process, the handshake timeout over TLS, JWT auth, drain and the session limit inside
TLS (ATP-WS-013, ATP-WS-014).
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from websockets.sync.client import connect as ws_connect

from atp_proto.client import HandshakeRefused, connect
from atp_proto.router import issue_token
from atp_proto.testing.certs import self_signed
from atp_proto.transports.tls import TLSConfig, fingerprint, generate_dev_cert
from tests.test_cli_errors import one_line

from ._helpers_e2e import (
    F_FIN,
    F_MORE,
    RouterProcess,
    atp,
    frames_until_end,
    router_process,
    syn_frame,
)


@pytest.fixture(scope="module")
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's data directory of the subprocesses (XDG_DATA_HOME)."""
    return tmp_path_factory.mktemp("xdg")


@pytest.fixture(scope="module")
def router(data_home: Path) -> Iterator[RouterProcess]:
    """``atp serve --dev-cert`` as a user runs it."""
    with router_process(
        "--no-auth",
        "--dev-cert",
        "--ws",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        env={"XDG_DATA_HOME": str(data_home)},
    ) as r:
        yield r


def dev_cert(data_home: Path) -> Path:
    return data_home / "atp" / "dev-cert.pem"


# ---------------------------------------------------------------------- as a user


def test_dev_cert_serve_and_send_with_ca(router: RouterProcess, data_home: Path) -> None:
    """[ATP-WS-013] ``atp serve --dev-cert`` serves wss://, printing the certificate's
    fingerprint and a warning that it is for local use; ``atp send wss://… --ca <cert>``
    streams PARTIALs and a FINAL from it (exit 0), by IP address and by name."""
    assert router.ws_url.startswith("wss://127.0.0.1:")
    cert = dev_cert(data_home)
    log = router.log()
    assert f"(SHA-256 {fingerprint(cert.read_bytes())})" in log
    assert "warning: the dev certificate is self-signed, for local use only" in log
    for url in (router.ws_url, router.ws_url.replace("127.0.0.1", "localhost")):
        proc = atp("send", url, "--prompt", "hello", "--ca", str(cert), "--timeout", "20")
        assert proc.returncode == 0, proc.stderr
        assert "PARTIAL" in proc.stdout and "FINAL  hello" in proc.stdout
        assert proc.stderr == ""


def test_unknown_ca_is_refused_unless_insecure(router: RouterProcess) -> None:
    """[ATP-WS-013] Without --ca the self-signed certificate is refused: one line naming the
    certificate, exit 1 (a connection that failed, as a refused port is); --insecure
    streams, after a one-line warning."""
    proc = atp("send", router.ws_url, "--prompt", "hi", "--timeout", "20")
    line = one_line(proc, 1)
    assert "TLS certificate refused" in line and "self-signed" in line
    proc = atp("send", router.ws_url, "--prompt", "hi", "--insecure", "--timeout", "20")
    assert proc.returncode == 0, proc.stderr
    assert "FINAL  hi" in proc.stdout
    assert proc.stderr.strip() == (
        "atp send: warning: --insecure: the router's certificate is not verified (local use only)"
    )


def test_bad_ca_file_is_bad_usage(router: RouterProcess, tmp_path: Path) -> None:
    """A --ca file that is missing or not a certificate: one line, exit 2; --ca on a
    ws:// URL too."""
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    for ca in (str(tmp_path / "missing.pem"), str(junk)):
        line = one_line(atp("send", router.ws_url, "--prompt", "hi", "--ca", ca), 2)
        assert "--ca" in line and ca in line
    plain = router.ws_url.replace("wss://", "ws://")
    assert "wss://" in one_line(atp("send", plain, "--prompt", "hi", "--insecure"), 2)


def test_independent_client_streams_over_wss(router: RouterProcess, data_home: Path) -> None:
    """[ATP-WS-001, ATP-WS-013] The ``websockets`` package, with its own ssl context
    trusting the dev cert, completes a stream over wss:// (frames built and parsed by
    hand), offering atp.v1."""
    ctx = ssl.create_default_context(cafile=str(dev_cert(data_home)))
    with ws_connect(
        router.ws_url, ssl=ctx, proxy=None, open_timeout=10, subprotocols=["atp.v1"]
    ) as ws:
        assert ws.subprotocol == "atp.v1"
        ws.send(syn_frame(1, "over tls", ["persona"]))
        frames = [f for f in frames_until_end(ws, {1}) if f.stream_id == 1]
    assert frames[-1].has(F_FIN)
    assert all(f.has(F_MORE) for f in frames[:-1]) and len(frames) >= 2


def test_operator_endpoints_answer_https_and_http(router: RouterProcess, data_home: Path) -> None:
    """/healthz, /readyz and /metrics answer https:// with the router's certificate (an
    independent client: urllib), and plain http:// still."""
    ctx = ssl.create_default_context(cafile=str(dev_cert(data_home)))
    port = router.metrics_port
    for path, want in (("/healthz", "ok"), ("/readyz", "ready"), ("/metrics", "atp_")):
        for scheme, context in (("https", ctx), ("http", None)):
            url = f"{scheme}://localhost:{port}{path}"
            with urllib.request.urlopen(url, context=context, timeout=10) as reply:
                assert reply.status == 200
                assert want in reply.read().decode()


def test_bad_certificate_files_exit_2(tmp_path: Path) -> None:
    """A missing, unreadable or mismatched --cert/--key: one line naming the file, exit 2;
    so are --key without --cert and --dev-cert with --cert."""
    cert, key = self_signed(tmp_path / "a", ["localhost"])
    _, other_key = self_signed(tmp_path / "b", ["localhost"])
    base = ("serve", "--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off")
    missing = str(tmp_path / "missing.pem")
    cases = [
        (["--cert", missing, "--key", str(key)], "no such file"),
        (["--cert", str(cert), "--key", str(other_key)], "does not match"),
        (["--key", str(key)], "--key needs --cert"),
        (["--dev-cert", "--cert", str(cert)], "--dev-cert"),
    ]
    for extra, words in cases:
        line = one_line(atp(*base, *extra), 2)
        assert words in line, line


# ---------------------------------------------------------------------- in process


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return generate_dev_cert(tmp_path_factory.mktemp("devcert"))


def tls_config(certs: tuple[Path, Path, str]) -> TLSConfig:
    return TLSConfig(cert_file=str(certs[0]), key_file=str(certs[1]))


def wss_url(router: object) -> str:
    return f"wss://127.0.0.1:{router.ws_port}/ws"  # type: ignore[attr-defined]


async def test_wrong_hostname_is_refused_unless_insecure(start_router, tmp_path: Path) -> None:
    """[ATP-WS-013] A certificate for another name, even from a trusted CA, is refused
    (ssl.SSLCertVerificationError naming the mismatch); insecure=True accepts it."""
    cert, key = self_signed(tmp_path, ["atp.invalid"])
    router = await start_router(tls=TLSConfig(str(cert), str(key)))
    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)hostname|ip address"):
        async with connect(wss_url(router), ca_file=str(cert)):
            pass  # pragma: no cover
    with pytest.warns(UserWarning, match="insecure"):
        async with connect(wss_url(router), insecure=True) as client:
            final = await client.ask("hi", task_type="qa")
    assert final.content


async def test_stalled_tls_handshakes_are_cut(start_router, certs: tuple[Path, Path, str]) -> None:
    """[ATP-WS-014] Clients that open TCP and never finish TLS — silent, or stopping
    halfway through a ClientHello — are cut after the handshake timeout, however many;
    meanwhile a real client streams."""
    router = await start_router(tls=tls_config(certs), handshake_timeout_s=0.5)
    stalled = []
    for i in range(30):
        s = await trio.open_tcp_stream("127.0.0.1", router.ws_port)
        if i % 2:
            await s.send_all(
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
            )  # a ClientHello's start
        stalled.append(s)
    async with connect(wss_url(router), ca_file=str(certs[0])) as client:
        assert (await client.ask("still serving")).content
    with trio.fail_after(5):  # the timeout is 0.5 s: all are cut well within this
        for s in stalled:
            with contextlib.suppress(trio.BrokenResourceError):  # a reset: cut all the same
                assert await s.receive_some(100) == b""
            await s.aclose()
    assert not router.sessions


async def test_stalled_handshakes_are_bounded_in_number(
    start_router, certs: tuple[Path, Path, str]
) -> None:
    """[ATP-WS-014] At most max_sessions connections may sit in their handshake at once:
    beyond that a new connection is closed at once (counted as refused, "busy"), not held
    until the timeout; once the stalled ones are cut, clients are served again."""
    router = await start_router(tls=tls_config(certs), handshake_timeout_s=1.5, max_sessions=4)
    stalled = [await trio.open_tcp_stream("127.0.0.1", router.ws_port) for _ in range(4)]
    with trio.fail_after(5):
        while router.handshaking < 4:
            await trio.sleep(0.01)
    extra = [await trio.open_tcp_stream("127.0.0.1", router.ws_port) for _ in range(3)]
    with trio.fail_after(1):  # well before the 1.5 s handshake timeout
        for s in extra:
            with contextlib.suppress(trio.BrokenResourceError):
                assert await s.receive_some(100) == b""
    assert router.metrics.handshakes_refused.get("busy") == 3
    assert router.handshaking == 4
    with trio.fail_after(5):
        for s in stalled:
            with contextlib.suppress(trio.BrokenResourceError):
                assert await s.receive_some(100) == b""
        while router.handshaking:
            await trio.sleep(0.01)
    async with connect(wss_url(router), ca_file=str(certs[0])) as client:
        assert (await client.ask("served again")).content
    for s in stalled + extra:
        await s.aclose()


async def test_jwt_auth_applies_inside_tls(
    start_router, jwt_env: str, certs: tuple[Path, Path, str]
) -> None:
    """[ATP-WS-006] Over wss:// the bearer token is checked as over ws://: none is a 401
    refusal, a valid one streams."""
    router = await start_router(tls=tls_config(certs), auth=True)
    with pytest.raises(HandshakeRefused) as refused:
        async with connect(wss_url(router), ca_file=str(certs[0])):
            pass  # pragma: no cover
    assert refused.value.status == 401
    token = issue_token(jwt_env.encode(), tenant="acme")
    async with connect(wss_url(router), token=token, ca_file=str(certs[0])) as client:
        assert (await client.ask("hello")).content


async def test_session_limit_inside_tls(start_router, certs: tuple[Path, Path, str]) -> None:
    """[ATP-LIMIT-003] Inside TLS, a handshake beyond max_sessions gets 503."""
    router = await start_router(tls=tls_config(certs), max_sessions=1)
    ca = str(certs[0])
    async with connect(wss_url(router), ca_file=ca) as client:
        assert (await client.ask("one")).content
        with pytest.raises(HandshakeRefused) as full:
            async with connect(wss_url(router), ca_file=ca):
                pass  # pragma: no cover
        assert full.value.status == 503 and b"too many sessions" in full.value.body


async def test_drain_inside_tls(
    start_router, nursery: trio.Nursery, certs: tuple[Path, Path, str]
) -> None:
    """[ATP-SESS-013] Drain over wss://: a new handshake gets 503 (draining), the stream in
    flight completes with its FINAL, then the session closes and the router stops."""
    router = await start_router(
        tls=tls_config(certs), adapters={"slow": "builtin:persona?latency_ms=100&chunks=4"}
    )
    ca = str(certs[0])
    async with connect(wss_url(router), ca_file=ca) as client:
        async with client.stream("long") as st:
            items = []
            async for item in st:
                items.append(item)
                if len(items) == 1:
                    nursery.start_soon(router.drain, 10)
                    with trio.fail_after(5):
                        while not client.draining:
                            await trio.sleep(0.01)
                    with pytest.raises(HandshakeRefused) as refused:
                        async with connect(wss_url(router), ca_file=ca):
                            pass  # pragma: no cover
                    assert refused.value.status == 503 and b"draining" in refused.value.body
        assert type(items[-1]).__name__ == "Final" and len(items) >= 2
    with trio.fail_after(5):
        await router.stopped.wait()


def test_config_file_tls_section(tmp_path: Path) -> None:
    """``[tls] cert = …, key = …`` in the config file (paths relative to the file) turns
    wss:// on; a missing file or an unknown key is a ConfigError naming it."""
    from atp_proto.router.config import ConfigError, build_config

    cert, key = self_signed(tmp_path / "certs", ["localhost"])
    conf = tmp_path / "atp.toml"
    conf.write_text('[tls]\ncert = "certs/cert.pem"\nkey = "certs/key.pem"\n')
    cfg = build_config(file=str(conf), env={}, flags={})
    assert cfg.tls == TLSConfig(cert_file=str(cert), key_file=str(key))
    conf.write_text('[tls]\ncert = "certs/nope.pem"\nkey = "certs/key.pem"\n')
    with pytest.raises(ConfigError, match=r"nope\.pem: no such file"):
        build_config(file=str(conf), env={}, flags={})
    conf.write_text('[tls]\ncert = "certs/cert.pem"\nca = "x"\n')
    with pytest.raises(ConfigError, match=r"\[tls\] takes cert"):
        build_config(file=str(conf), env={}, flags={})


def test_plain_ws_beyond_loopback_warns_about_tokens(tmp_path: Path) -> None:
    """[ATP-SEC-008] With auth on, a router serving plain ws:// on a non-loopback address
    warns that tokens travel in clear; with a certificate it does not."""
    import secrets

    env = {"ATP_JWT_KEY": secrets.token_hex(32)}
    words = "tokens travel in clear"
    with router_process("--ws", "0.0.0.0:0", "--metrics", "off", env=env) as plain:
        assert words in plain.log()
    cert, key = self_signed(tmp_path, ["localhost"])
    tls_args = ("--cert", str(cert), "--key", str(key))
    with router_process("--ws", "0.0.0.0:0", "--metrics", "off", *tls_args, env=env) as tls:
        assert tls.ws_url.startswith("wss://")
        assert words not in tls.log()
