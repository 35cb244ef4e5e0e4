"""TLS under the WebSocket transport (``wss://``; the transport checker runs over it in
tests/transports/test_transport_checker.py, read by trio's ``SSLStream``): the TLS
stream's own edges; :class:`TLSConfig`'s refusals in
words; the dev cert (ATP-WS-013, ATP-WS-014)."""

from __future__ import annotations

import os
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
import wsproto.events as we
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from atp_proto.testing.certs import self_signed
from atp_proto.testing.ws_peer import WsPeer, tls_streams
from atp_proto.transports._tls_stream import TlsStream
from atp_proto.transports.tls import (
    ALPN_QUIC,
    InsecureTLSWarning,
    TLSConfig,
    TLSConfigError,
    dev_cert_dir,
    generate_dev_cert,
)
from atp_proto.transports.ws_client import connect_ws
from atp_proto.transports.ws_server import WsConnection

#: a broken send path tends to hang (a torn frame never completes): fail fast instead
SEND_DEADLINE = pytest.mark.deadline(10)


@pytest.fixture(scope="module")
def dev_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return generate_dev_cert(tmp_path_factory.mktemp("devcert"))


async def _tls_streams(
    dev_cert: tuple[Path, Path, str], *, small: bool = True
) -> tuple[TlsStream, trio.SSLStream[trio.SocketStream]]:
    """Our server TlsStream and trio's client SSLStream on loopback TCP, handshake done."""
    cert, key, _ = dev_cert
    return await tls_streams(
        TLSConfig(str(cert), str(key)).server_ssl_context(),
        TLSConfig(ca_file=str(cert)).client_ssl_context(),
        small=small,
    )


# ---------------------------------------------------------------------- the TLS stream


@SEND_DEADLINE
async def test_alpn_and_a_round_trip(dev_cert: tuple[Path, Path, str]) -> None:
    """[ATP-WS-013] wss:// negotiates ALPN http/1.1; bytes cross both ways intact."""
    server, client = await _tls_streams(dev_cert, small=False)
    assert server.selected_alpn_protocol == "http/1.1"
    assert client.selected_alpn_protocol() == "http/1.1"
    await client.send_all(b"ping" * 10_000)
    got = b""
    while len(got) < 40_000:
        got += await server.receive_some(65536)
    assert got == b"ping" * 10_000
    await server.send_all(b"pong")
    assert await client.receive_some(100) == b"pong"


@SEND_DEADLINE
async def test_eof_with_and_without_close_notify_is_the_end(
    dev_cert: tuple[Path, Path, str],
) -> None:
    """A peer that closes with close_notify (with or without closing TCP), or just drops
    TCP, ends the stream (b"");
    what it sent before is still delivered. (The WebSocket close handshake inside TLS
    tells a clean end from a cut one.)"""

    async def opened() -> tuple[TlsStream, trio.SSLStream[trio.SocketStream]]:
        server, client = await _tls_streams(dev_cert, small=False)
        # the client takes the server's session tickets (else closing it with unread
        # bytes would reset the connection instead of ending it)
        await server.send_all(b"hi")
        assert await client.receive_some(10) == b"hi"
        return server, client

    server, client = await opened()
    await client.send_all(b"last words")
    await client.aclose()  # close_notify
    assert await server.receive_some(100) == b"last words"
    assert await server.receive_some(100) == b""
    server, client = await opened()
    async with trio.open_nursery() as nursery:  # close_notify, TCP left open
        nursery.start_soon(client.unwrap)  # waits for ours, which never comes
        with trio.fail_after(5):
            assert await server.receive_some(100) == b""
        nursery.cancel_scope.cancel()
    server, client = await opened()
    await client.send_all(b"cut")
    await client.transport_stream.aclose()  # no close_notify
    assert await server.receive_some(100) == b"cut"
    assert await server.receive_some(100) == b""


@SEND_DEADLINE
async def test_try_send_over_tls_keeps_order(dev_cert: tuple[Path, Path, str]) -> None:
    """WsConnection.try_send over TLS sends at once; what the socket does not take stays
    queued (as ciphertext) and goes first with the next flush, in order."""
    tls, client = await _tls_streams(dev_cert)
    server = WsConnection(tls, max_message_size=1 << 22, remote="pair")
    peer = WsPeer(client)
    await peer.stream.send_all(peer.ws.send(we.Request(host="localhost", target="/ws")))
    assert await server.read_request() is not None
    await server.accept(None)
    assert await peer.read_until(1) == ["<accepted>"]
    big, small = b"x" * 300_000, b"y" * 10
    assert server.try_send(big) is True  # more than the socket takes: the rest is queued
    assert tls.pending
    assert server.try_send(small) is False  # ... so the next one is the writer's
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, 3)
        await server.flush()
        await server.send(small)
    assert peer.messages[1:] == [big, small]


@SEND_DEADLINE
async def test_a_corrupted_record_breaks_the_stream(dev_cert: tuple[Path, Path, str]) -> None:
    """Bytes that are not a TLS record after the handshake: BrokenResourceError (the
    WebSocket layer turns it into TransportClosed), never another exception."""
    server, client = await _tls_streams(dev_cert, small=False)
    await client.transport_stream.send_all(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some(100)
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"after")


# ---------------------------------------------------------------------- TLSConfig


def test_bad_certificate_files_are_refused_in_words(tmp_path: Path) -> None:
    """A missing file, a file that is not PEM, a key of another certificate, an encrypted
    key: each a TLSConfigError naming the file (atp serve: one line, exit 2)."""
    cert, key = self_signed(tmp_path / "a", ["localhost"])
    _, other_key = self_signed(tmp_path / "b", ["localhost"])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        serialization.load_pem_private_key(key.read_bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = {
        "is encrypted": TLSConfig(str(cert), str(encrypted)),  # never a terminal prompt
        "no such file": TLSConfig(str(tmp_path / "missing.pem"), str(key)),
        "not a usable": TLSConfig(str(junk), str(key)),
        "does not match": TLSConfig(str(cert), str(other_key)),
    }
    for words, cfg in cases.items():
        with pytest.raises(TLSConfigError) as ei:
            cfg.server_ssl_context()
        assert words in str(ei.value), str(ei.value)
        assert "\n" not in str(ei.value)
    with pytest.raises(TLSConfigError, match=r"junk\.pem"):
        TLSConfig(ca_file=str(junk)).client_ssl_context()
    with pytest.raises(TLSConfigError, match="needs a certificate"):
        TLSConfig().server_ssl_context()
    assert TLSConfig(str(cert), str(key)).server_ssl_context().minimum_version >= (
        ssl.TLSVersion.TLSv1_2
    )


def test_client_context_verifies_unless_insecure(tmp_path: Path) -> None:
    """[ATP-WS-013] Clients verify by default (chain and hostname); insecure turns both
    off and warns."""
    cert, _ = self_signed(tmp_path, ["localhost"])
    for ctx in (
        TLSConfig().client_ssl_context(),
        TLSConfig(ca_file=str(cert)).client_ssl_context(),
    ):
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.warns(InsecureTLSWarning):
        ctx = TLSConfig(insecure=True).client_ssl_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert ALPN_QUIC == "atp/1"  # the QUIC binding's ALPN (ATP-QUIC-001)


# ---------------------------------------------------------------------- dev cert


def test_dev_cert_is_made_once_for_local_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dev cert lives under $XDG_DATA_HOME/atp (0700), its key 0600; it is ECDSA P-256
    for localhost, 127.0.0.1 and ::1; the printed fingerprint is its SHA-256; a second
    call reuses it (same bytes), and a cert that expires soon or lost its key is
    replaced."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    directory = dev_cert_dir()
    assert directory == tmp_path / "data" / "atp"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    cert_path, key_path, fp = generate_dev_cert(directory)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert fp == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    before = cert_path.read_bytes()
    assert generate_dev_cert(directory) == (cert_path, key_path, fp)
    assert cert_path.read_bytes() == before
    # a key that no longer matches: a new pair
    _, other_key = self_signed(tmp_path / "other", ["localhost"])
    key_path.write_bytes(other_key.read_bytes())
    _, _, fp2 = generate_dev_cert(directory)
    assert fp2 != fp
    # a cert about to expire: a new one
    soon, soon_key = self_signed(tmp_path / "soon", ["localhost"], days=2)
    cert_path.write_bytes(soon.read_bytes())
    key_path.write_bytes(soon_key.read_bytes())
    _, _, fp3 = generate_dev_cert(directory)
    assert fp3 not in (fp, fp2)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert not [p for p in os.listdir(directory) if p.endswith(".tmp")]


@SEND_DEADLINE
async def test_records_split_into_single_bytes(dev_cert: tuple[Path, Path, str]) -> None:
    """Through a relay that forwards the client's bytes one at a time (every TLS record,
    the handshake's too, arrives in pieces), the handshake completes and the data comes
    through whole and in order."""
    cert, key, _ = dev_cert
    a, b = trio.socket.socketpair()  # server <-> relay
    c, d = trio.socket.socketpair()  # relay <-> client
    server = TlsStream(
        trio.SocketStream(a), TLSConfig(str(cert), str(key)).server_ssl_context(), server_side=True
    )
    client = trio.SSLStream(
        trio.SocketStream(d),
        TLSConfig(ca_file=str(cert)).client_ssl_context(),
        server_hostname="localhost",
    )
    relay_in, relay_out = trio.SocketStream(b), trio.SocketStream(c)

    async def byte_by_byte() -> None:
        while data := await relay_out.receive_some(65536):
            for i in range(len(data)):
                await relay_in.send_all(data[i : i + 1])
                await trio.sleep(0)

    async def back() -> None:
        while data := await relay_in.receive_some(65536):
            await relay_out.send_all(data)

    payload = bytes(range(256)) * 12  # one record, in ~3,000 pieces
    async with trio.open_nursery() as nursery:
        nursery.start_soon(byte_by_byte)
        nursery.start_soon(back)
        nursery.start_soon(client.do_handshake)
        await server.do_handshake()
        await client.send_all(payload)
        got = b""
        while len(got) < len(payload):
            got += await server.receive_some(65536)
        assert got == payload
        await server.send_all(b"done")
        assert await client.receive_some(10) == b"done"
        nursery.cancel_scope.cancel()


@pytest.fixture
def websockets_tls_echo(dev_cert: tuple[Path, Path, str]) -> Iterator[int]:
    """An independent wss:// server: the ``websockets`` package's echo, in a thread, with
    the standard library's TLS and the dev cert."""
    from websockets.sync.server import ServerConnection, serve

    cert, key, _ = dev_cert

    def echo(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    ctx = TLSConfig(str(cert), str(key)).server_ssl_context()
    with serve(echo, "127.0.0.1", 0, ssl=ctx, compression=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(5)


@SEND_DEADLINE
async def test_our_client_against_an_independent_wss_server(
    websockets_tls_echo: int, dev_cert: tuple[Path, Path, str]
) -> None:
    """[ATP-WS-013] Our client (connect_ws over TlsStream) completes TLS and the upgrade
    with the ``websockets`` server, and messages of many sizes (one byte to several
    records) echo back whole; trusting only another certificate, it refuses the server's."""
    ca = str(dev_cert[0])
    ctx = TLSConfig(ca_file=ca).client_ssl_context()
    ws = await connect_ws(f"wss://localhost:{websockets_tls_echo}/", ssl_context=ctx)
    try:
        for size in (1, 1000, 70_000, 300_000):
            message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            await ws.send(message)
            assert await ws.receive() == message
        await ws.send("text é")
        assert await ws.receive() == "text é"
    finally:
        await ws.close()
    other, _ = self_signed(dev_cert[0].parent / "other", ["atp.invalid"])
    with pytest.raises(ssl.SSLCertVerificationError):
        bad = TLSConfig(ca_file=str(other)).client_ssl_context()
        await connect_ws(f"wss://localhost:{websockets_tls_echo}/", ssl_context=bad)
