"""The gRPC client's count of open outbound streams (``_h2_fastpath.Connection``): it must
decide every comparison against the server's ``max_concurrent_streams`` as h2's exact
count does, and still drop closed streams so a long-lived connection stays bounded.

Runs a real h2 server connection in memory (h2's sans-IO state machines on both sides):
the thing under test is the count, not the transport.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from atp_proto.adapters.grpc._h2_fastpath import Connection

HEADERS = [(b":method", b"POST"), (b":path", b"/x"), (b":scheme", b"http"), (b":authority", b"a")]


def _pair(max_streams: int | None) -> tuple[Connection, h2.connection.H2Connection]:
    client = Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    if max_streams is not None:
        server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
    _pump(client, server)
    return client, server


def _pump(client: Connection, server: h2.connection.H2Connection) -> None:
    for _ in range(4):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())


def _open(client: Connection, server: h2.connection.H2Connection) -> int:
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, HEADERS, end_stream=True)
    server.receive_data(client.data_to_send())
    return sid


def _finish(client: Connection, server: h2.connection.H2Connection, sid: int) -> None:
    server.send_headers(sid, [(b":status", b"200")], end_stream=True)
    client.receive_data(server.data_to_send())


def _exact(client: Connection) -> int:
    return sum(1 for sid, st in client.streams.items() if st.open and sid % 2 == 1)


def test_the_limit_is_enforced_exactly_as_h2_does() -> None:
    """At the server's limit a new stream is refused; once one closes, one more fits."""
    client, server = _pair(max_streams=3)
    sids = [_open(client, server) for _ in range(3)]
    assert client.open_outbound_streams == 3
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        client.send_headers(client.get_next_available_stream_id(), HEADERS)
    _finish(client, server, sids[0])
    # 3 streams still held (one closed), limit 3: the count must be exact here
    assert client.open_outbound_streams == 2 == _exact(client)
    _open(client, server)  # fits
    assert client.open_outbound_streams == 3


def test_below_the_limit_every_comparison_agrees_with_the_exact_count() -> None:
    client, server = _pair(max_streams=10)
    limit = client.remote_settings.max_concurrent_streams
    live: list[int] = []
    for i in range(40):
        if len(live) < 9:
            live.append(_open(client, server))
        if i % 3 == 2:
            _finish(client, server, live.pop(0))
        value, exact = client.open_outbound_streams, _exact(client)
        assert value >= exact
        assert (value < limit) == (exact < limit)
        assert (value + 1 > limit) == (exact + 1 > limit)


def test_closed_streams_are_still_dropped_without_a_limit() -> None:
    """No MAX_CONCURRENT_STREAMS from the server (h2: unlimited): the held streams must not
    grow with the calls made, only with those in flight."""
    client, server = _pair(max_streams=None)
    live: list[int] = []
    for _ in range(2000):
        live.append(_open(client, server))
        if len(live) > 5:
            _finish(client, server, live.pop(0))
    assert _exact(client) == 5
    assert len(client.streams) <= 2 * 5 + 64 + 1
    # a closed stream was moved where h2 keeps closed streams (late frames handled as h2 does)
    assert len(client._closed_streams) > 0
