"""The transport checker (:mod:`atp_proto.testing.transport_checker`) over every transport:
``ws://`` and ``wss://`` (our WsConnection, over our TlsStream for wss, read by wsproto's
client over loopback TCP — over trio's SSLStream for wss), our ``ws://`` client
(``connect_ws``, read by a wsproto server), QUIC (our QuicServer's
transport, read by aioquic's asyncio client in a thread) and our QUIC client
(``connect_quic``, read by aioquic's asyncio server in a thread). One battery, parametrized; a
check that does not apply to a per-stream binding is skipped with the reason it gives."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from atp_proto.testing.certs import CertFiles, make_cert
from atp_proto.testing.quic_peer import quic_binding, quic_client_binding
from atp_proto.testing.transport_checker import CHECKS, Binding, Check
from atp_proto.testing.ws_peer import ws_binding
from atp_proto.transports.tls import TLSConfig


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(tmp_path_factory.mktemp("checker-certs"))


#: the bindings, and whether each is per-stream
BINDINGS = {"ws": False, "wss": False, "ws-client": False, "quic": True, "quic-client": True}
CASES = [
    pytest.param(
        name,
        check,
        id=f"{name}-{check.name}",
        marks=[pytest.mark.skip(reason=f"{name}: {why}")] if why else [],
    )
    for name, per_stream in BINDINGS.items()
    for check in CHECKS
    for why in [check.skip_reason(per_stream)]
]


@pytest.fixture
async def binding(request: pytest.FixtureRequest, cert: CertFiles) -> AsyncIterator[Binding]:
    if request.param == "quic":
        async with quic_binding(cert.cert, cert.key) as b:
            yield b
    elif request.param == "quic-client":
        async with quic_client_binding(cert.cert, cert.key) as b:
            yield b
    elif request.param == "ws-client":
        async with ws_binding(client_side=True) as b:
            yield b
    elif request.param == "wss":
        server = TLSConfig(cert.cert, cert.key).server_ssl_context()
        client = TLSConfig(ca_file=cert.cert).client_ssl_context()
        async with ws_binding(server, client) as b:
            yield b
    else:
        async with ws_binding() as b:
            yield b


@pytest.mark.deadline(40)
@pytest.mark.parametrize(("binding", "check"), CASES, indirect=["binding"])
async def test_transport_checker(binding: Binding, check: Check) -> None:
    """ATP-WS-012, ATP-QUIC-004, ATP-QUIC-006, ATP-QUIC-010, ATP-ERR-002: see the check."""
    assert binding.per_stream == BINDINGS[binding.name]
    await check.run(binding.make)


#: what every binding must pass, per-stream ones too
EVERY_BINDING = {
    "units_in_order",
    "received_in_order",
    "large_units",
    "backpressure",
    "close_code",
    "abrupt_peer_loss",
    "concurrent_senders",
}


def test_the_battery_covers_what_every_transport_owes() -> None:
    """The battery names the properties the issue lists (ordering, large messages,
    backpressure, close codes, abrupt peer loss, concurrent senders, size limits) and
    runs all but the message-only ones on a per-stream binding."""
    names = {c.name.split("[")[0] for c in CHECKS}
    assert EVERY_BINDING | {"unit_size_limit", "cancelled_send_keeps_framing"} <= names
    assert all(c.skip_reason(False) is None for c in CHECKS)
    assert {c.name for c in CHECKS if c.skip_reason(True) is None} == EVERY_BINDING
