"""The client's QUIC connection (spec §13.2): aioquic on its own trio UDP socket.

:func:`connect_quic` resolves the router, opens a UDP socket, runs the handshake (ALPN
``atp/1``, ATP-QUIC-001; the certificate verified unless ``insecure``) and yields the
:class:`~._quic_conn.QuicTransport` the client's session runs on, with the control stream
(QUIC stream 0, ATP-QUIC-011) opened first. Nothing is sent before the handshake has
completed and no session ticket is kept, so no SYN ever travels in 0-RTT data
(ATP-QUIC-007). Like dnspython's trio QUIC client, the receive loop, the sender and
aioquic's timer are three tasks of one nursery sharing trio's clock.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection

from ._quic_conn import ALPN, QuicTransport
from ._quic_udp import Address, UdpEndpoint, open_udp_socket

__all__ = ["QuicConnectError", "connect_quic", "is_loopback"]


class QuicConnectError(Exception):
    """The QUIC handshake failed or timed out (message says why, for a person)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@asynccontextmanager
async def connect_quic(
    host: str,
    port: int,
    *,
    ca_file: str | None = None,
    insecure: bool = False,
    server_name: str | None = None,
    idle_timeout: float = 60.0,
    max_datagram_size: int | None = None,
    connect_timeout: float = 10.0,
    udp_offload: bool = True,
) -> AsyncIterator[QuicTransport]:
    """A QUIC connection to the router at ``host:port``, closed on exit. ``udp_offload``:
    UDP GSO / GRO where the kernel has them (atp_proto/transports/_quic_udp.py).

    Raises:
        QuicConnectError: the handshake failed (certificate, ALPN, no answer).
    """
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    except OSError as exc:
        raise QuicConnectError(f"cannot resolve {host}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    addr: Address = (str(sockaddr[0]), int(sockaddr[1]))
    size = max_datagram_size or (8000 if is_loopback(addr[0]) else SMALLEST_MAX_DATAGRAM_SIZE)
    conf = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=server_name or host,
        idle_timeout=idle_timeout,
        max_datagram_size=size,
        max_data=4 * 1024 * 1024,
        max_stream_data=1024 * 1024,
        verify_mode=ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED,
    )
    if ca_file:
        conf.load_verify_locations(cafile=ca_file)
    sock = open_udp_socket("::" if family == trio.socket.AF_INET6 else "0.0.0.0", 0)
    endpoint = UdpEndpoint(sock, offload=udp_offload)
    quic = QuicConnection(configuration=conf)
    transport = QuicTransport(quic, endpoint, is_client=True, remote=f"{addr[0]}:{addr[1]}")

    def on_batch(batch: list[tuple[bytes, Address]], now: float) -> None:
        for data, src in batch:
            transport.datagram_received(data, src, now)
        transport.after_batch()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.sender)
            nursery.start_soon(endpoint.receive_loop, on_batch)
            nursery.start_soon(transport.run_timer)
            quic.connect(addr, now=trio.current_time())
            endpoint.mark(transport)
            with trio.move_on_after(connect_timeout):
                await transport.handshake_done.wait()
            if not transport.handshake_done.is_set():
                raise QuicConnectError(f"no QUIC handshake with {host}:{port} (timed out)")
            if transport.terminated.is_set():
                why = transport.peer_close_reason or f"code 0x{transport.peer_close_code or 0:x}"
                raise QuicConnectError(f"QUIC handshake with {host}:{port} failed: {why}")
            quic.send_stream_data(0, b"")  # the control stream is QUIC stream 0
            try:
                yield transport
            finally:
                with trio.CancelScope(shield=True):
                    await transport.aclose()
                nursery.cancel_scope.cancel()
    finally:
        endpoint.close()
