"""Differential property test of the request fast path (``Connection.send_request`` in
``adapters/grpc/_h2_fastpath.py``): the same calls made on two client connections, one
through the fast path and one through h2's ``send_headers`` + ``send_data``, queue the
same bytes and leave the same h2 state (connection, every stream, its state machine and
windows); a real h2 server decodes the same requests from both. No sockets: the
connections talk through ``data_to_send`` / ``receive_data``."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as strat

from atp_proto.adapters.grpc._h2 import H2Channel
from atp_proto.adapters.grpc._h2_fastpath import Connection


def _client() -> Connection:
    """A client connection configured as :class:`H2Channel` configures its own."""
    ch = H2Channel(
        stream=None,  # type: ignore[arg-type]  # no I/O here
        authority=b"a",
        scheme=b"http",
        window=65535,
        connection_window=1 << 24,
        max_message_size=4 << 20,
        label="diff",
    )
    return ch.h2


def _server(client: Connection, server_settings: dict[int, int]) -> h2.connection.H2Connection:
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    if server_settings:
        server.update_settings(server_settings)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # SETTINGS ACK
    return server


def _state(c: Connection) -> dict[str, Any]:
    """Everything h2 keeps that a request changes, comparable between connections."""

    def plain(obj: Any) -> dict[str, Any]:
        return {
            k: v
            for k, v in vars(obj).items()
            if k not in ("config", "state_machine", "_inbound_window_manager")
        }

    streams = {
        sid: (
            plain(st),
            vars(st.state_machine),
            vars(st._inbound_window_manager),
        )
        for sid, st in c.streams.items()
        if not st.closed  # closed ones are dropped whenever h2 counts (a cache detail)
    }
    return {
        "streams": streams,
        "state": c.state_machine.state,
        "highest_outbound": c.highest_outbound_stream_id,
        "outbound_window": c.outbound_flow_control_window,
        "resized": c.encoder.header_table.resized,
        "table": list(c.encoder.header_table.dynamic_entries),
    }


def _request(c: Connection, sid: int, headers: list[tuple[bytes, bytes]], data: bytes) -> None:
    """What ``H2Channel.start_call`` does through h2 (no waiting: data fits here)."""
    c.send_headers(sid, headers)
    while True:
        window = min(c.local_flow_control_window(sid), c.max_outbound_frame_size)
        part, data = data[:window], data[window:]
        c.send_data(sid, part, end_stream=not data)
        if not data:
            return


def _requests(server: h2.connection.H2Connection, data: bytes) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for ev in server.receive_data(data):
        if isinstance(ev, h2.events.RequestReceived):
            out.append(("headers", ev.stream_id, list(ev.headers)))
        elif isinstance(ev, h2.events.DataReceived):
            out.append(("data", ev.stream_id, ev.data))
        elif isinstance(ev, h2.events.StreamEnded):
            out.append(("end", ev.stream_id))
    return out


header_value = strat.text(alphabet="abcxyz019-._~/", max_size=40).map(str.encode)
calls = strat.lists(
    strat.tuples(
        strat.sampled_from(
            [b"/atp.adapter.v1.Adapter/Stream", b"/atp.adapter.v1.Adapter/Estimate"]
        ),
        strat.one_of(strat.none(), strat.sampled_from([b"9999m", b"10S", b"1000000u"])),
        strat.integers(0, 20000),  # request message bytes: some over a frame
        strat.lists(
            strat.tuples(strat.sampled_from([b"x-a", b"user-agent"]), header_value), max_size=3
        ),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=120, deadline=None)
@given(
    calls=calls,
    max_frame=strat.sampled_from([16384, 16384, 20000]),
    initial_window=strat.sampled_from([65535, 65535, 8000, 100]),
    table_size=strat.sampled_from([None, 4096, 256, 0]),
    max_streams=strat.sampled_from([None, 3]),
)
def test_send_request_equals_h2(
    calls: list[tuple[bytes, bytes | None, int, list[tuple[bytes, bytes]]]],
    max_frame: int,
    initial_window: int,
    table_size: int | None,
    max_streams: int | None,
) -> None:
    codes = h2.settings.SettingCodes
    server_settings = {codes.MAX_FRAME_SIZE: max_frame, codes.INITIAL_WINDOW_SIZE: initial_window}
    if table_size is not None:
        server_settings[codes.HEADER_TABLE_SIZE] = table_size
    if max_streams is not None:
        server_settings[codes.MAX_CONCURRENT_STREAMS] = max_streams
    fast, slow = _client(), _client()
    fast_server, slow_server = _server(fast, server_settings), _server(slow, server_settings)
    took = []
    for path, timeout, size, extra in calls:
        sid = fast.get_next_available_stream_id()
        assert sid == slow.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"127.0.0.1:50051"),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            *extra,
        ]
        if timeout is not None:
            headers.append((b"grpc-timeout", timeout))
        data = b"\x00" + size.to_bytes(4, "big") + bytes(size % 251 for _ in range(size))
        too_many = fast.open_outbound_streams + 1 > fast.remote_settings.max_concurrent_streams
        fits = len(data) <= min(
            fast.outbound_flow_control_window,
            fast.remote_settings.initial_window_size,  # a new stream's window
            fast.max_outbound_frame_size,
        )
        if too_many or not fits:
            # outside what one start_call does without waiting: both sides must refuse
            # (the fast path by returning False, h2 by raising) or be equal
            assert not fast.send_request(sid, list(headers), data)
            assert _state(fast) == _state(slow)
            if too_many:
                with pytest.raises(h2.exceptions.TooManyStreamsError):
                    slow.send_headers(sid, headers)
                with pytest.raises(h2.exceptions.TooManyStreamsError):
                    fast.send_headers(sid, headers)
                break
            continue
        if fast.send_request(sid, list(headers), data):
            took.append(True)
        else:
            took.append(False)
            _request(fast, sid, headers, data)
        _request(slow, sid, headers, data)
        assert _state(fast) == _state(slow)
        fast_bytes, slow_bytes = fast.data_to_send(), slow.data_to_send()
        assert fast_bytes == slow_bytes  # byte for byte, not only in meaning
        assert _requests(fast_server, fast_bytes) == _requests(slow_server, slow_bytes)
        # the server ends each call (so streams close and slots free up as in real use)
        for server, client in ((fast_server, fast), (slow_server, slow)):
            server.send_headers(sid, [(b":status", b"200")])
            server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            client.receive_data(server.data_to_send())
            server.receive_data(client.data_to_send())
        assert _state(fast) == _state(slow)
    if table_size is None:
        # no size update pending: every request that fitted one frame went the fast way
        assert all(took)


def test_send_request_is_taken_for_a_grpc_call() -> None:
    c = _client()
    _server(c, {})
    sid = c.get_next_available_stream_id()
    headers = [(b":method", b"POST"), (b":path", b"/x"), (b":authority", b"a")]
    assert c.send_request(sid, headers, b"\x00\x00\x00\x00\x02hi")
    st = c.streams[sid]
    assert st.state_machine.state is h2.stream.StreamState.HALF_CLOSED_LOCAL
    assert st._authority == b"a" and st.request_method == b"POST"
    assert not c.send_request(sid, headers, b"")  # a known stream: h2's business
