"""Stateless reset (RFC 9000 §10.3, ATP-QUIC-022): our client detects the reset our
router sends for a connection it has no state for, and ends the session at once instead
of waiting for its idle timeout. Real UDP sockets on loopback, a real router; the router
"loses" the connection's state by forgetting its connection IDs (as after a restart with
the same reset key), so the reset on the wire is the router's own."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from atp_proto.client import ConnectionLost, connect
from atp_proto.transports.quic_server import reset_token


def _transport(client: object) -> object:
    return client._ws  # type: ignore[attr-defined]


@pytest.mark.deadline(30)
async def test_client_ends_the_session_on_the_routers_stateless_reset(quic_router, cert) -> None:
    """ATP-QUIC-022: once the router has forgotten the connection, the client's next
    stream gets the router's stateless reset; the client ends the session within a
    second or so (its idle timeout is 60 s) and the stream fails with ConnectionLost
    EINTERNAL saying why; the transport is closed for sending (it sends nothing more)."""
    router = await quic_router()
    server = router.quic_server
    assert server is not None
    async with connect(f"quic://127.0.0.1:{router.quic_port}", ca_file=cert.cert) as client:
        assert (await client.ask("before")).content  # the connection works
        transport = _transport(client)
        assert not transport.stateless_reset  # type: ignore[attr-defined]
        server.connections.clear()  # the router no longer knows any of its CIDs
        with trio.fail_after(5), pytest.raises(ConnectionLost) as err:
            await client.ask("after")
        assert err.value.code == "EINTERNAL"
        assert "stateless reset" in str(err.value)
        assert transport.stateless_reset  # type: ignore[attr-defined]
        assert transport.terminated.is_set() and transport.closed  # type: ignore[attr-defined]


@pytest.mark.deadline(30)
async def test_a_datagram_without_the_token_does_not_reset(quic_router, cert) -> None:
    """A short-header datagram from the router's address whose last 16 bytes are not the
    token of the connection ID in use (here: the token of a CID the client never used)
    is not a stateless reset: the connection goes on (§10.3.1)."""
    router = await quic_router()
    server = router.quic_server
    assert server is not None
    async with connect(f"quic://127.0.0.1:{router.quic_port}", ca_file=cert.cert) as client:
        assert (await client.ask("before")).content
        transport = _transport(client)
        sock = transport.endpoint.sock  # type: ignore[attr-defined]
        other = reset_token(server._reset_key, os.urandom(8))
        fake = bytes([0x40 | 0x01]) + os.urandom(30) + other
        # from the router's own socket, so that only the token tells it apart
        rs = server._endpoint.sock  # type: ignore[union-attr]
        rs.sendto(fake, sock.getsockname())
        await trio.sleep(0.2)
        assert not transport.stateless_reset  # type: ignore[attr-defined]
        assert (await client.ask("after")).content


def test_reset_detection_needs_the_peer_address() -> None:
    """The same datagram with the right token from another address is ignored: aioquic
    drops datagrams from unknown server addresses, and so does the reset check."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from atp_proto.transports._quic_conn import QuicTransport
    from atp_proto.transports._quic_udp import UdpEndpoint

    async def main() -> None:
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
        quic.connect(("127.0.0.1", 4433), now=0.0)
        token = os.urandom(16)
        quic._peer_cid.stateless_reset_token = token
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            t = QuicTransport(quic, UdpEndpoint(sock), is_client=True)
            packet = bytes([0x41]) + os.urandom(20) + token
            t.datagram_received(packet, ("127.0.0.1", 9), 0.0)  # another address
            assert not t.stateless_reset
            t.datagram_received(packet, ("127.0.0.1", 4433), 0.0)  # the router's
            assert t.stateless_reset and t.terminated.is_set() and t.closed
            assert t.take_datagrams(0.01) == []  # draining: nothing more is sent

    trio.run(main)
