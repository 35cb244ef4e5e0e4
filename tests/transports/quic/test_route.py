"""The QUIC server's datagram routing: ``QuicServer._route``'s shortcut for short-header
packets of known connections against the general path beside it (``_route_general``,
``pull_quic_header`` first). Whatever the bytes — a known CID, an unknown one (stateless
reset), a CID cut short, the fixed bit clear, too short a datagram — both must pick the
same connection and send the same datagrams (a unit test: the UDP endpoint is a recorder,
the connections are markers)."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from atp_proto.testing.certs import CertFiles, make_cert
from atp_proto.transports import quic_server as qs
from atp_proto.transports.quic_server import CID_LENGTH, QuicServer, QuicServerConfig

KNOWN = [os.urandom(CID_LENGTH) for _ in range(3)]
KEY = os.urandom(32)
ADDR = ("127.0.0.1", 4433)


class _Recorder:
    """What the server sends outside connections (stateless resets)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def send_now(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


_CERT: CertFiles | None = None


def _server() -> tuple[QuicServer, _Recorder]:
    global _CERT
    if _CERT is None:
        import tempfile
        from pathlib import Path

        _CERT = make_cert(Path(tempfile.mkdtemp(prefix="atp-route-")))

    async def handler(_t: Any) -> None:  # pragma: no cover - never runs here
        return None

    server = QuicServer(QuicServerConfig(_CERT.cert, _CERT.key, retry=True), handler)
    server._conf = qs.server_configuration(server.cfg, loopback=True)
    rec = _Recorder()
    server._endpoint = rec  # type: ignore[assignment]
    server._reset_key = KEY
    server.connections = {cid: f"conn-{i}" for i, cid in enumerate(KNOWN)}  # type: ignore[misc]
    return server, rec


datagram = st.tuples(
    st.integers(0, 0x7F),  # short-header form (the shortcut's domain), fixed bit either way
    st.one_of(
        st.sampled_from(KNOWN),
        st.binary(min_size=0, max_size=CID_LENGTH),  # unknown, or cut short
        st.sampled_from(KNOWN).map(lambda c: c[:-1]),
    ),
    st.binary(max_size=60),
)


@given(st.lists(datagram, min_size=1, max_size=8))
def test_the_shortcut_routes_as_the_general_path(items: list[tuple[int, bytes, bytes]]) -> None:
    fast, fast_sent = _server()
    general, general_sent = _server()
    for first, cid, rest in items:
        data = bytes([first]) + cid + rest
        assert fast._route(data, ADDR, 0.0) == general._route_general(data, ADDR, 0.0)
    # a reset's first bytes are random (RFC 9000 §10.3): compare its size and its token
    assert [(len(d), d[-16:], a) for d, a in fast_sent.sent] == [
        (len(d), d[-16:], a) for d, a in general_sent.sent
    ]


def test_the_shortcut_is_taken(monkeypatch: Any) -> None:
    """A 1-RTT packet of a known connection never reaches pull_quic_header; an unknown
    CID still does (and gets its stateless reset)."""
    server, sent = _server()
    calls: list[bytes] = []
    pull = qs.pull_quic_header

    def spy(buf: Any, host_cid_length: int) -> Any:
        calls.append(buf.data_slice(0, 1))
        return pull(buf, host_cid_length=host_cid_length)

    monkeypatch.setattr(qs, "pull_quic_header", spy)
    assert server._route(bytes([0x41]) + KNOWN[1] + os.urandom(40), ADDR, 0.0) == "conn-1"
    assert not calls
    assert server._route(bytes([0x41]) + os.urandom(CID_LENGTH + 40), ADDR, 0.0) is None
    assert len(calls) == 1 and len(sent.sent) == 1  # the unknown CID's stateless reset
