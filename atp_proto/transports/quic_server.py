"""The router's QUIC listener (spec §13.2): aioquic on one trio UDP socket.

:class:`QuicServer` owns the socket (:class:`~._quic_udp.UdpEndpoint`: one receive loop,
one sender task) and routes every datagram to its connection by destination connection
ID — the table follows aioquic's ``ConnectionIdIssued`` / ``ConnectionIdRetired``, so a
peer that switches to a new CID stays on its connection. Before a connection exists:

* an unsupported version gets a version negotiation packet (never for a VN packet);
* address validation: an Initial without a token gets a Retry whose token binds the
  client's address (``retry=True``, the default); an Initial with a token that does not
  validate is closed with INVALID_TOKEN, as aioquic's own server does;
* a short-header packet for an unknown CID gets a stateless reset (RFC 9000 §10.3),
  smaller than the packet that caused it and rate-limited. Its token is derived from the
  CID with a key of this server (:func:`reset_token`), and every CID the server issues
  carries that token (:class:`_ResetTokenConnection`), so a reset is recognised even
  for a connection whose state is gone.

Each new connection runs ``handler(transport)`` (the router: one ATP session) in the
server's nursery, beside its timer task; when the handler returns the connection is
closed (normal close, application code 0, ATP-QUIC-015) and forgotten after aioquic's
closing period. A handshake that does not complete in ``handshake_timeout`` is dropped.
No 0-RTT: the server keeps no session tickets, so it never accepts early data (a SYN in
0-RTT could be replayed, ATP-QUIC-007).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from aioquic._buffer import Buffer
from aioquic.asyncio.server import _encode_invalid_token_close
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from ._quic_conn import ALPN, QuicTransport
from ._quic_udp import Address, UdpEndpoint, open_udp_socket

__all__ = [
    "QuicServer",
    "QuicServerConfig",
    "QuicTransport",
    "reset_token",
    "server_configuration",
]

log = logging.getLogger("atp.quic")

CID_LENGTH = 8
#: stateless resets sent per second at most
RESET_RATE = 100


@dataclass(frozen=True)
class QuicServerConfig:
    """How the router serves QUIC."""

    cert_file: str
    key_file: str
    retry: bool = True  #: validate client addresses with Retry tokens
    idle_timeout: float = 60.0  #: QUIC idle timeout (s)
    #: UDP payload size we send; None: 1,200 on the Internet, 8,000 on loopback
    max_datagram_size: int | None = None
    handshake_timeout: float = 10.0
    max_connections: int = 10_000
    max_data: int = 4 * 1024 * 1024  #: QUIC connection flow-control window (bytes)
    max_stream_data: int = 1024 * 1024  #: QUIC per-stream flow-control window (bytes)
    udp_offload: bool = True  #: UDP GSO / GRO where the kernel has them (_quic_udp.py)


def server_configuration(cfg: QuicServerConfig, loopback: bool) -> QuicConfiguration:
    """aioquic's configuration for the router: ALPN ``atp/1`` only (ATP-QUIC-001)."""
    size = cfg.max_datagram_size or (8000 if loopback else SMALLEST_MAX_DATAGRAM_SIZE)
    conf = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        idle_timeout=cfg.idle_timeout,
        max_datagram_size=size,
        connection_id_length=CID_LENGTH,
        max_data=cfg.max_data,
        max_stream_data=cfg.max_stream_data,
    )
    conf.load_cert_chain(cfg.cert_file, cfg.key_file)
    return conf


def reset_token(key: bytes, cid: bytes) -> bytes:
    """The stateless reset token of ``cid`` (RFC 9000 §10.3.2: a keyed hash of the CID)."""
    return hmac.new(key, cid, hashlib.sha256).digest()[:16]


class _ResetTokenConnection(QuicConnection):
    """A server connection whose CIDs carry :func:`reset_token` tokens (pinned aioquic:
    ``_host_cids`` and ``_replenish_connection_ids``, tests/test_pinned_internals.py)."""

    _atp_reset_key: bytes = b""

    def _atp_fix_tokens(self) -> None:
        for cid in self._host_cids:
            if not cid.was_sent or cid.sequence_number == 0:
                cid.stateless_reset_token = reset_token(self._atp_reset_key, cid.cid)

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        self._atp_fix_tokens()


class QuicServer:
    """Serves QUIC on one UDP socket; ``handler`` runs once per connection."""

    def __init__(
        self,
        cfg: QuicServerConfig,
        handler: Callable[[QuicTransport], Awaitable[None]],
    ) -> None:
        self.cfg = cfg
        self.handler = handler
        self.port: int | None = None
        self.connections: dict[bytes, QuicTransport] = {}
        self.transports: set[QuicTransport] = set()
        self._retry = QuicRetryTokenHandler() if cfg.retry else None
        self._reset_key = os.urandom(32)
        self._resets = 0
        self._reset_second = 0
        self._nursery: trio.Nursery | None = None
        self._endpoint: UdpEndpoint | None = None
        self._conf: QuicConfiguration | None = None

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` (UDP) until cancelled; ``started`` with the port."""
        loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
        self._conf = server_configuration(self.cfg, loopback)
        ep = self._endpoint = UdpEndpoint(open_udp_socket(host, port), offload=self.cfg.udp_offload)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(ep.sender)
                nursery.start_soon(ep.receive_loop, self._on_batch)
                self.port = ep.address[1]
                task_status.started(self.port)
        finally:
            ep.close()

    # ------------------------------------------------------------------ datagrams

    def _on_batch(self, batch: list[tuple[bytes, Address]], now: float) -> None:
        touched: dict[QuicTransport, None] = {}
        for data, addr in batch:
            conn = self._route(data, addr, now)
            if conn is not None:
                conn.datagram_received(data, addr, now)
                touched[conn] = None
        for conn in touched:
            conn.after_batch()

    def _route(self, data: bytes, addr: Address, now: float) -> QuicTransport | None:
        """The connection a datagram is for (None: dealt with here, or dropped).

        Shortcut for nearly every datagram of a running connection: a 1-RTT packet
        (short header: form bit 0, fixed bit 1) names its destination CID in bytes
        1..8, every CID this server issues being ``CID_LENGTH`` long, so a known one is
        a dictionary lookup instead of ``pull_quic_header``. Anything else, an unknown
        CID included (stateless reset), goes :meth:`_route_general`, which decides the
        same for these (tests/transports/quic/test_route.py)."""
        if len(data) > CID_LENGTH and data[0] & 0xC0 == 0x40:
            conn = self.connections.get(data[1 : 1 + CID_LENGTH])
            if conn is not None:
                return conn
        return self._route_general(data, addr, now)

    def _route_general(self, data: bytes, addr: Address, now: float) -> QuicTransport | None:
        """:meth:`_route` without its shortcut: every kind of datagram."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            return None
        conn = self.connections.get(header.destination_cid)
        if conn is not None:
            return conn
        ep = self._endpoint
        conf = self._conf
        assert ep is not None and conf is not None
        if header.packet_type == QuicPacketType.ONE_RTT:
            self._stateless_reset(data, header.destination_cid, addr)
            return None
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in conf.supported_versions
        ):
            ep.send_now(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=conf.supported_versions,
                ),
                addr,
            )
            return None
        if (
            header.packet_type != QuicPacketType.INITIAL
            or header.version is None
            or len(data) < SMALLEST_MAX_DATAGRAM_SIZE
        ):
            return None
        if len(self.transports) >= self.cfg.max_connections:
            return None
        original_dcid: bytes | None = header.destination_cid
        retry_scid: bytes | None = None
        if self._retry is not None:
            if not header.token:
                scid = os.urandom(CID_LENGTH)
                ep.send_now(
                    encode_quic_retry(
                        version=header.version,
                        source_cid=scid,
                        destination_cid=header.source_cid,
                        original_destination_cid=header.destination_cid,
                        retry_token=self._retry.create_token(
                            address=addr,
                            original_destination_connection_id=header.destination_cid,
                            retry_source_connection_id=scid,
                            now=now,
                        ),
                    ),
                    addr,
                )
                return None
            try:
                original_dcid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:  # forged, stale or another address's: INVALID_TOKEN (§8.1.3)
                ep.send_now(
                    _encode_invalid_token_close(
                        version=header.version,
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                    ),
                    addr,
                )
                return None
            retry_scid = header.destination_cid
        quic = _ResetTokenConnection(
            configuration=conf,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        quic._atp_reset_key = self._reset_key
        quic._atp_fix_tokens()
        transport = QuicTransport(
            quic, ep, is_client=False, remote=f"{addr[0]}:{addr[1]}", on_cid=None
        )
        transport._on_cid = lambda cid, issued: self._cid_changed(transport, cid, issued)
        self.connections[header.destination_cid] = transport
        self.connections[quic.host_cid] = transport
        self.transports.add(transport)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_connection, transport, header.destination_cid)
        return transport

    def _cid_changed(self, transport: QuicTransport, cid: bytes, issued: bool) -> None:
        if issued:
            self.connections[cid] = transport
        elif self.connections.get(cid) is transport:
            del self.connections[cid]

    def _stateless_reset(self, data: bytes, cid: bytes, addr: Address) -> None:
        if len(data) < 22 or self._endpoint is None:  # a reset must be smaller, >= 21 bytes
            return
        second = int(time.monotonic())
        if second != self._reset_second:
            self._reset_second, self._resets = second, 0
        if self._resets >= RESET_RATE:
            return
        self._resets += 1
        size = min(len(data) - 1, 43)
        first = (os.urandom(1)[0] & 0x3F) | 0x40  # short header form, fixed bit set
        packet = bytes([first]) + os.urandom(size - 17) + reset_token(self._reset_key, cid)
        self._endpoint.send_now(packet, addr)

    # ------------------------------------------------------------------ connections

    async def _run_connection(self, transport: QuicTransport, first_dcid: bytes) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.run_timer)
                stopping = False
                try:
                    with trio.move_on_after(self.cfg.handshake_timeout):
                        await transport.handshake_done.wait()
                    if transport.handshake_done.is_set() and not transport.terminated.is_set():
                        await self.handler(transport)
                except trio.Cancelled:
                    stopping = True  # the server stops: the sender is going too
                    raise
                except Exception:
                    log.exception("QUIC connection handler failed")
                finally:
                    if stopping:
                        transport.close_now()
                    else:
                        with trio.CancelScope(shield=True):
                            await transport.aclose()
                        with trio.move_on_after(3):  # aioquic's closing period
                            await transport.terminated.wait()
                    nursery.cancel_scope.cancel()
        finally:
            self.transports.discard(transport)
            for cid in [c for c, t in self.connections.items() if t is transport]:
                del self.connections[cid]
