"""The router's own framing of data messages (``server_frame``, used by
``WsConnection`` once it accepted an upgrade) against wsproto's serializer, and against
a client's parser: the same bytes at every payload-length width (7 bits, 16, 64), text and
binary, so taking the frames out of wsproto changes nothing on the wire (RFC 6455 5.2)."""

from __future__ import annotations

import pytest
import wsproto
import wsproto.events as we
from hypothesis import given
from hypothesis import strategies as st

from atp_proto.transports.ws_server import server_frame

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 300_000]


def _open_pair() -> tuple[wsproto.WSConnection, wsproto.WSConnection]:
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server.receive_data(client.send(we.Request(host="h", target="/")))
    assert any(isinstance(e, we.Request) for e in server.events())
    client.receive_data(server.send(we.AcceptConnection()))
    assert any(isinstance(e, we.AcceptConnection) for e in client.events())
    return server, client


def _received(client: wsproto.WSConnection, data: bytes) -> list[we.Event]:
    client.receive_data(data)
    return list(client.events())


@pytest.mark.parametrize("size", SIZES)
def test_binary_frame_is_wsprotos(size: int) -> None:
    server, client = _open_pair()
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    ours = server_frame(payload)
    assert ours == server.send(we.BytesMessage(data=payload))
    events = _received(client, ours)
    assert len(events) == 1 and isinstance(events[0], we.BytesMessage)
    assert events[0].message_finished and bytes(events[0].data) == payload


@pytest.mark.parametrize("size", SIZES)
def test_text_frame_is_wsprotos(size: int) -> None:
    """The length is the UTF-8 length, not the number of characters."""
    server, client = _open_pair()
    text = ("é" * size)[: max(size // 2, 0)] + "x" * (size % 2)
    ours = server_frame(text)
    assert ours == server.send(we.TextMessage(data=text))
    events = _received(client, ours)
    assert len(events) == 1 and isinstance(events[0], we.TextMessage)
    assert events[0].data == text


@given(st.one_of(st.binary(max_size=70_000), st.text(max_size=2_000)))
def test_any_message_is_wsprotos(message: bytes | str) -> None:
    server, _ = _open_pair()
    expected = (
        server.send(we.TextMessage(data=message))
        if isinstance(message, str)
        else server.send(we.BytesMessage(data=message))
    )
    assert server_frame(message) == expected
