"""The private internals of pinned libraries that atp_proto relies on, checked one by one.

pyproject.toml pins h2, h11, wsproto, grpclib and aioquic exactly because our fast paths
read or override something private in them. An upgrade that changes one of these fails
here, by name, before it can fail subtly in a relay or a benchmark. When this file fails
after an upgrade: read the library's change, adapt the one module named in the test, and
move the pin.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect

import h2.config
import h2.connection
import h2.exceptions
import pytest
import wsproto
import wsproto.events as we
from grpclib.server import Server

from atp_proto.adapters.grpc import _h2_fastpath
from atp_proto.adapters.grpc import server as grpc_server

PINS = {"h2": "4.4.1", "h11": "0.16.0", "wsproto": "1.3.2", "grpclib": "0.4.9", "aioquic": "1.7.2"}


@pytest.mark.parametrize(("dist", "version"), sorted(PINS.items()))
def test_installed_version_is_the_pinned_one(dist: str, version: str) -> None:
    assert md.version(dist) == version, (
        f"{dist} {md.version(dist)} is installed but {version} is pinned: "
        "run this file's checks against the new version before moving the pin"
    )


def test_pyproject_pins_exactly() -> None:
    reqs = md.requires("atp-proto") or []
    exact = {
        r.split("==")[0].strip().lower(): r.split("==")[1].split(";")[0].strip()
        for r in reqs
        if "==" in r
    }
    for dist, version in PINS.items():
        assert exact.get(dist) == version, f"pyproject.toml must pin {dist}=={version}"


def _h2_client_with_open_stream() -> tuple[h2.connection.H2Connection, int]:
    cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2.connection.H2Connection(cfg)
    conn.initiate_connection()
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    server.receive_data(conn.data_to_send())
    conn.receive_data(server.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid, [(":method", "POST"), (":path", "/x"), (":scheme", "http"), (":authority", "a")]
    )
    server.receive_data(conn.data_to_send())
    server.send_headers(sid, [(":status", "200")])
    conn.receive_data(server.data_to_send())
    return conn, sid


def test_h2_internals_used_by_the_grpc_fast_path() -> None:
    """adapters/grpc/_h2_fastpath.py (fast_window) accounts a DATA frame as h2 would."""
    assert "_inbound_flow_control_window_manager" in inspect.getsource(_h2_fastpath)
    conn, sid = _h2_client_with_open_stream()
    st = conn.streams[sid]
    cw = conn._inbound_flow_control_window_manager
    sw = st._inbound_window_manager
    assert isinstance(cw.current_window_size, int)
    assert isinstance(sw.current_window_size, int)
    assert st._expected_content_length is None
    assert isinstance(st._actual_content_length, int)
    assert st.state_machine.headers_received
    # and h2's own accounting moves the same fields the fast path moves
    before = (cw.current_window_size, sw.current_window_size, st._actual_content_length)
    import hyperframe.frame as hf

    data = hf.DataFrame(sid)
    data.data = b"x" * 10
    conn.receive_data(data.serialize())
    after = (cw.current_window_size, sw.current_window_size, st._actual_content_length)
    assert after == (before[0] - 10, before[1] - 10, before[2] + 10)


def test_wsproto_keeps_pipelined_bytes_in_h11_trailing_data() -> None:
    """transports/ws_server.py takes frames sent right behind the upgrade from h11's buffer."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    request = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    ws.receive_data(request + b"EARLY")
    assert any(isinstance(e, we.Request) for e in ws.events())
    h11_conn = ws.handshake._h11_connection
    assert bytes(h11_conn.trailing_data[0]) == b"EARLY"


async def _build_protocol() -> object:
    server = grpc_server.CoalescingServer([], codec=grpc_server.RawCodec())
    return server._protocol_factory()


def test_grpclib_server_protocol_factory_is_overridable() -> None:
    """adapters/grpc/server.py rebuilds the H2Protocol grpclib's Server makes per connection from
    its ``handler``, ``config`` and ``h2_config`` attributes."""
    import asyncio

    from grpclib.protocol import H2Protocol

    assert grpc_server.CoalescingServer._protocol_factory is not Server._protocol_factory
    assert list(inspect.signature(Server._protocol_factory).parameters) == ["self"]
    proto = asyncio.run(_build_protocol())
    assert isinstance(proto, grpc_server.CoalescingProtocol)
    assert isinstance(proto, H2Protocol)
    for attr in ("handler", "config", "h2_config"):
        assert getattr(proto, attr) is not None, attr


def test_aioquic_internals_the_quic_transport_uses() -> None:
    """atp_proto/transports/_quic_conn.py reads ``QuicConnection._state`` / ``_streams``
    and each stream sender's ``_buffer_start`` / ``_buffer_stop`` (the unacknowledged
    bytes, ATP-QUIC-010); quic_server.py overrides ``_replenish_connection_ids`` and sets
    the ``stateless_reset_token`` of ``_host_cids`` entries, and uses aioquic's
    ``_encode_invalid_token_close``."""
    from aioquic.asyncio import server as aioquic_server
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection, QuicConnectionId, QuicConnectionState

    conn = QuicConnection(configuration=QuicConfiguration(is_client=True))
    assert isinstance(conn._state, QuicConnectionState)
    conn.send_stream_data(0, b"abc")
    sender = conn._streams[0].sender
    assert sender._buffer_stop - sender._buffer_start == 3
    assert hasattr(conn, "_replenish_connection_ids") and isinstance(conn._host_cids, list)
    cid = conn._host_cids[0]
    assert isinstance(cid, QuicConnectionId)
    assert {"cid", "sequence_number", "stateless_reset_token", "was_sent"} <= set(vars(cid))
    assert "source_cid" in inspect.signature(aioquic_server._encode_invalid_token_close).parameters


def test_aioquic_internals_the_stateless_reset_check_uses() -> None:
    """atp_proto/transports/_quic_conn.py (ATP-QUIC-022) reads the token of
    ``QuicConnection._peer_cid`` and ends a reset connection as aioquic ends one whose
    peer sent CONNECTION_CLOSE: ``_close_event`` set, ``_close_begin(is_initiator=False,
    now=...)`` entering the draining state, in which nothing is sent."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection, QuicConnectionId, QuicConnectionState

    conn = QuicConnection(configuration=QuicConfiguration(is_client=True))
    conn.connect(("127.0.0.1", 4433), now=0.0)
    assert isinstance(conn._peer_cid, QuicConnectionId)
    assert isinstance(conn._peer_cid.stateless_reset_token, bytes)
    assert conn.get_peer_address() == ("127.0.0.1", 4433)
    assert conn._close_event is None
    assert list(inspect.signature(conn._close_begin).parameters) == ["is_initiator", "now"]
    conn._close_begin(is_initiator=False, now=0.0)
    assert conn._state == QuicConnectionState.DRAINING
    assert conn.datagrams_to_send(now=0.0) == []


def test_h2_counts_open_streams_through_the_property_we_override() -> None:
    """adapters/grpc/_h2_fastpath.py (Connection) overrides ``open_outbound_streams``: h2's
    ``send_headers`` must still ask that property before opening a stream (else the
    override would not be used), and h2's own count must still drop closed streams (the
    override calls it to keep the connection's memory bounded)."""
    assert "self.open_outbound_streams" in inspect.getsource(
        h2.connection.H2Connection.send_headers
    )
    assert "self.streams.pop" in inspect.getsource(h2.connection.H2Connection._open_streams)
    assert isinstance(h2.connection.H2Connection.__dict__["open_outbound_streams"], property), (
        "h2's open_outbound_streams is no longer a property"
    )
    assert issubclass(_h2_fastpath.Connection, h2.connection.H2Connection)


def test_aioquic_internals_the_conformance_stateless_reset_uses() -> None:
    """conformance/roles/client_quic.py (case client.quic.stateless-reset, ATP-QUIC-022)
    builds a stateless reset from the token a plain aioquic server connection issued: it
    looks the client's destination CID up in ``QuicConnection._host_cids`` (``cid``,
    ``stateless_reset_token``), and sees a CONNECTION_CLOSE that arrives after the reset in
    ``_close_event`` (set at once; the public event waits for the draining period). An
    in-memory handshake: the token the client holds for the CID it uses is that entry's."""
    import ssl
    import tempfile
    from pathlib import Path

    from aioquic.buffer import Buffer
    from aioquic.quic import events as qe
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.packet import pull_quic_header

    from atp_proto.transports.tls import generate_dev_cert

    with tempfile.TemporaryDirectory() as tmp:
        cert, key, _ = generate_dev_cert(Path(tmp))
        sconf = QuicConfiguration(is_client=False, alpn_protocols=["atp/1"])
        sconf.load_cert_chain(str(cert), str(key))
    cconf = QuicConfiguration(is_client=True, alpn_protocols=["atp/1"])
    cconf.verify_mode = ssl.CERT_NONE
    client = QuicConnection(configuration=cconf)
    caddr, saddr = ("127.0.0.1", 1), ("127.0.0.1", 2)
    client.connect(saddr, now=0.0)
    server: QuicConnection | None = None
    last: bytes = b""
    for _ in range(10):
        for data, _a in client.datagrams_to_send(now=0.0):
            if server is None:
                hdr = pull_quic_header(Buffer(data=data), host_cid_length=8)
                server = QuicConnection(
                    configuration=sconf, original_destination_connection_id=hdr.destination_cid
                )
            last = data
            server.receive_datagram(data, caddr, now=0.0)
        assert server is not None
        for data, _a in server.datagrams_to_send(now=0.0):
            client.receive_datagram(data, saddr, now=0.0)
    assert server is not None
    dcid = pull_quic_header(Buffer(data=last), host_cid_length=8).destination_cid
    tokens = {c.cid: c.stateless_reset_token for c in server._host_cids}
    assert tokens[dcid] == client._peer_cid.stateless_reset_token != b""
    assert server._close_event is None
    client.close(error_code=0x0)
    for data, _a in client.datagrams_to_send(now=0.0):
        server.receive_datagram(data, caddr, now=0.0)
    assert isinstance(server._close_event, qe.ConnectionTerminated)
    assert server._close_event.error_code == 0x0


def test_h2_receive_frame_copy_is_of_the_pinned_h2() -> None:
    """adapters/grpc/_h2_fastpath.py's Connection._receive_frame copies h2's (without the
    repr(frame) of a no-op trace log): h2's source must be the one it copied."""
    import hashlib

    src = inspect.getsource(h2.connection.H2Connection._receive_frame)
    assert hashlib.sha256(src.encode()).hexdigest() == _h2_fastpath.H2_RECEIVE_FRAME_SHA256, (
        "h2's _receive_frame changed: re-copy it into _h2_fastpath.Connection._receive_frame"
    )
    assert 'logger.trace("Received frame: %s", repr(frame))' in src


def _pair(cls: type) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client = cls(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.data_to_send()
    return client, server


def _script(cls: type) -> list[object]:
    """The same exchange against ``cls``: a call answered, one reset by the client whose
    late HEADERS and DATA arrive (h2's StreamClosedError path: RST_STREAM back), a DATA
    frame on the stream that ended. What the client emits (and raises), in order."""
    import hyperframe.frame as hf

    client, server = _pair(cls)
    req = [(":method", "POST"), (":path", "/x"), (":scheme", "http"), (":authority", "a")]
    out: list[object] = []
    for sid in (1, 3):
        client.send_headers(sid, req, end_stream=True)
    server.receive_data(client.data_to_send())
    for sid in (1, 3):
        server.send_headers(sid, [(":status", "200")])
    client.reset_stream(3)
    server.send_data(1, b"hello")
    server.send_data(3, b"late")
    server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    events = client.receive_data(server.data_to_send())
    out.append([(type(e).__name__, getattr(e, "stream_id", None)) for e in events])
    out.append(client.data_to_send())
    late = hf.DataFrame(1, data=b"x")  # stream 1 ended by END_STREAM (then pruned)
    try:
        client.receive_data(late.serialize())
    except h2.exceptions.ProtocolError as exc:
        out.append(("raised", type(exc).__name__))
    out.append(client.data_to_send())
    return out


def test_h2_receive_frame_copy_behaves_as_h2s() -> None:
    got = _script(_h2_fastpath.Connection)
    assert got == _script(h2.connection.H2Connection)
    # the exchange reached the except branches: RST_STREAM(STREAM_CLOSED) answered the
    # reset stream's frames and the late DATA on the ended one
    rst3 = b"\x00\x00\x04\x03\x00\x00\x00\x00\x03\x00\x00\x00\x05"
    assert got[0] == [
        ("ResponseReceived", 1), ("DataReceived", 1), ("TrailersReceived", 1), ("StreamEnded", 1)
    ]  # fmt: skip
    assert isinstance(got[1], bytes) and rst3 in got[1]
    assert got[-1] == b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x05"


def test_h2_request_path_replaced_by_send_request_is_of_the_pinned_h2() -> None:
    """adapters/grpc/_h2_fastpath.py's Connection.send_request leaves h2's state as h2's
    send_headers + send_data do (tests/adapters/test_grpc_send_request.py checks it
    against h2 itself): the h2 methods and transitions it stands in for must be the ones
    it was written against."""
    import hashlib

    import h2.stream

    parts = [
        h2.connection.H2Connection.send_headers,
        h2.connection.H2Connection.send_data,
        h2.connection.H2Connection._begin_new_stream,
        h2.stream.H2Stream.send_headers,
        h2.stream.H2Stream.send_data,
        h2.stream.H2Stream._build_headers_frames,
        h2.stream.H2StreamStateMachine.request_sent,
    ]
    src = "".join(inspect.getsource(f) for f in parts)
    assert hashlib.sha256(src.encode()).hexdigest() == _h2_fastpath.H2_SEND_REQUEST_SHA256, (
        "h2's request path changed: check _h2_fastpath.Connection.send_request against it"
    )
    st, si = h2.stream.StreamState, h2.stream.StreamInputs
    table = h2.stream._transitions
    assert table[(st.IDLE, si.SEND_HEADERS)] == (
        h2.stream.H2StreamStateMachine.request_sent,
        st.OPEN,
    )
    assert table[(st.OPEN, si.SEND_DATA)] == (None, st.OPEN)
    assert table[(st.OPEN, si.SEND_END_STREAM)] == (None, st.HALF_CLOSED_LOCAL)
    cs, ci = h2.connection.ConnectionState, h2.connection.ConnectionInputs
    machine = h2.connection.H2ConnectionStateMachine
    assert machine._transitions[(cs.IDLE, ci.SEND_HEADERS)] == (None, cs.CLIENT_OPEN)
    assert machine._transitions[(cs.CLIENT_OPEN, ci.SEND_HEADERS)] == (None, cs.CLIENT_OPEN)
    assert machine._transitions[(cs.CLIENT_OPEN, ci.SEND_DATA)] == (None, cs.CLIENT_OPEN)


def test_h2_response_headers_path_replaced_by_receive_headers_is_of_the_pinned_h2() -> None:
    """adapters/grpc/_h2_fastpath.py's Connection.receive_headers decodes a response's
    header block with h2's ``_decode_headers`` and, for a plain block, updates the stream
    as h2's ``receive_headers`` does; otherwise it runs the rest of h2's
    ``_receive_headers_frame`` (tests/adapters/test_grpc_receive_headers.py checks it
    against h2 itself). The h2 functions, transitions, attributes and frame flags it
    relies on must be the ones it was written against."""
    import hashlib

    import h2.stream
    import h2.utilities as u
    from hyperframe.frame import HeadersFrame

    c, s = h2.connection, h2.stream
    parts = [
        c.H2Connection.receive_data,
        c.H2Connection._receive_headers_frame,
        c._decode_headers,
        s.H2Stream.receive_headers,
        s.H2Stream._initialize_content_length,
        s.H2Stream._process_received_headers,
        s.H2StreamStateMachine.response_received,
        s.H2StreamStateMachine.stream_ended,
        u.is_informational_response,
        u.validate_headers,
        u.normalize_inbound_headers,
        u._reject_illegal_characters,
        u._reject_empty_header_names,
        u._reject_te,
        u._reject_connection_header,
        # what _plain_block assumes of the rest of h2's checks and normalisation: a
        # leading non-1xx :status then regular fields pass them unchanged, and only
        # cookie fields are transformed (the stream's own calls and flags included)
        u._reject_pseudo_header_fields,
        u._check_pseudo_header_field_acceptability,
        u._assert_header_in_set,
        u._check_host_authority_header,
        u._check_path_header,
        u._combine_cookie_fields,
        s.H2Stream._build_hdr_validation_flags,
        s.H2StreamStateMachine.process_input,
        c.H2Connection._get_or_create_stream,
    ]
    src = "".join(inspect.getsource(f) for f in parts)
    assert hashlib.sha256(src.encode()).hexdigest() == _h2_fastpath.H2_RECEIVE_HEADERS_SHA256, (
        "h2's response-headers path changed: check _h2_fastpath.Connection.receive_headers"
    )
    # the sets those checks read: a response's :status allowed, not request-only
    assert b":status" in u._ALLOWED_PSEUDO_HEADER_FIELDS
    assert b":status" not in u._REQUEST_ONLY_HEADERS
    st, si = s.StreamState, s.StreamInputs
    table = s._transitions
    assert table[(st.HALF_CLOSED_LOCAL, si.RECV_HEADERS)] == (
        s.H2StreamStateMachine.response_received,
        st.HALF_CLOSED_LOCAL,
    )
    assert table[(st.HALF_CLOSED_LOCAL, si.RECV_END_STREAM)] == (
        s.H2StreamStateMachine.stream_ended,
        st.CLOSED,
    )
    cs, ci = c.ConnectionState, c.ConnectionInputs
    machine = c.H2ConnectionStateMachine
    assert machine._transitions[(cs.CLIENT_OPEN, ci.RECV_HEADERS)] == (None, cs.CLIENT_OPEN)
    assert dict(HeadersFrame.defined_flags) == {
        "END_STREAM": 0x01, "END_HEADERS": 0x04, "PADDED": 0x08, "PRIORITY": 0x20
    }  # fmt: skip
    # the attributes it reads and writes, on a client stream with its response in
    conn, sid = _h2_client_with_open_stream()
    sm = conn.streams[sid].state_machine
    assert (sm.client, sm.headers_received, sm.trailers_received, sm.stream_closed_by) == (
        True,
        True,
        None,
        None,
    )
    assert conn.streams[sid]._expected_content_length is None
    for name in ("decoder", "_terminate_connection", "_get_or_create_stream"):
        assert hasattr(conn, name), name
    assert callable(conn._prepare_for_sending)
