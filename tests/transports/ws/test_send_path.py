"""The WebSocket transport's send path: the transport checker (tests/transports/checker.py)
on a server-side :class:`WsConnection` over a real ``socketpair`` read by a wsproto client,
and the WebSocket-only checks: the message size boundary, and a first PARTIAL that never
waits on a client that does not read (moved from tests/router/test_ws_layer.py, sections
8-9 and the review regression).
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as we

from atp_proto.transports.base import Oversized, ws_close_code
from atp_proto.transports.ws_server import WsConnection
from tests.router._helpers_e2e import (
    syn_frame as _syn,
)

from ..checker import (
    SEND_DEADLINE,
    Pair,
    PairMaker,
    test_cancelled_send_keeps_framing,
    test_cancelled_twice_then_close,
    test_cancelled_waiters_keep_call_order,
    test_concurrent_senders_keep_call_order,
    test_send_cancelled_while_waiting_for_its_turn,
)
from ._raw import OP_BINARY, OP_PING, _open_ws, ws_frame

__all__ = [  # the checker's tests, run here over WebSocket
    "test_cancelled_send_keeps_framing",
    "test_cancelled_twice_then_close",
    "test_cancelled_waiters_keep_call_order",
    "test_concurrent_senders_keep_call_order",
    "test_send_cancelled_while_waiting_for_its_turn",
]

SMALL_BUF = 4096


class Peer:
    """The client end of a socketpair, parsed by a wsproto client connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.messages: list[bytes | str] = []
        self.closes: list[int] = []
        self._parts: list[Any] = []
        self.bytes_read = 0

    def _feed(self, data: bytes) -> None:
        self.bytes_read += len(data)
        self.ws.receive_data(data)
        for ev in self.ws.events():
            if isinstance(ev, we.Message):
                self._parts.append(ev.data)
                if ev.message_finished:
                    joined = (
                        "".join(self._parts)
                        if isinstance(ev, we.TextMessage)
                        else b"".join(self._parts)
                    )
                    self.messages.append(joined)
                    self._parts = []
            elif isinstance(ev, we.CloseConnection):
                self.closes.append(ev.code)
            elif isinstance(ev, we.AcceptConnection):
                self.messages.append("<accepted>")

    async def read_for(self, seconds: float) -> None:
        """Read whatever arrives for ``seconds``."""
        with trio.move_on_after(seconds):
            while True:
                self._feed(bytes(await self.stream.receive_some(65536)))

    async def read_until_close_and_answer(self) -> None:
        """Read up to the transport's close frame, then answer it."""
        while not self.closes:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self._feed(bytes(data))
        await self.stream.send_all(self.ws.send(we.CloseConnection(code=1000)))

    async def read_until(
        self, n_messages: int, chunk: int = 65536, delay: float = 0.0
    ) -> list[bytes | str]:
        while len(self.messages) < n_messages:
            data = await self.stream.receive_some(chunk)
            assert data, f"EOF after {len(self.messages)} messages"
            self._feed(bytes(data))
            if delay:
                await trio.sleep(delay)
        return self.messages


async def _ws_pair(*, max_message_size: int = 1 << 22) -> tuple[WsConnection, Peer]:
    """A server WsConnection and a wsproto client on a real socketpair with small buffers,
    handshake done."""
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
    server = WsConnection(trio.SocketStream(a), max_message_size=max_message_size, remote="pair")
    peer = Peer(trio.SocketStream(b))
    await peer.stream.send_all(peer.ws.send(we.Request(host="localhost", target="/ws?q=1")))
    request = await server.read_request()
    assert request is not None and request.path == "/ws?q=1"
    await server.accept(None)
    assert await peer.read_until(1) == ["<accepted>"]
    peer.messages.clear()
    peer.bytes_read = 0
    return server, peer


@pytest.fixture
def transport_pair() -> PairMaker:
    """The checker's pair for WebSocket."""

    async def make() -> Pair:
        ws, peer = await _ws_pair()
        return Pair(ws, peer, ws_close_code)

    return make


@SEND_DEADLINE
async def test_max_message_size_boundary_unit() -> None:
    """[ATP-WS-012] WsConnection's own limit: a message of exactly max_message_size is
    delivered (also in fragments); one byte more, in one piece or in fragments, is
    skipped and handed on as Oversized with its first 24 bytes (text: a bounded prefix)
    for the session to answer ETOOBIG; the connection stays open for that answer."""
    ws, peer = await _ws_pair(max_message_size=1000)
    await peer.stream.send_all(peer.ws.send(we.BytesMessage(data=b"a" * 1000)))
    assert await ws.receive() == b"a" * 1000
    await peer.stream.send_all(
        peer.ws.send(we.TextMessage(data="é" * 200, message_finished=False))
        + peer.ws.send(we.TextMessage(data="b" * 600, message_finished=True))
    )
    assert await ws.receive() == "é" * 200 + "b" * 600  # 400 + 600 bytes
    await peer.stream.send_all(peer.ws.send(we.BytesMessage(data=b"c" * 1001)))
    assert await ws.receive() == Oversized(b"c" * 24, 1000)
    await peer.stream.send_all(
        peer.ws.send(we.BytesMessage(data=b"d" * 10, message_finished=False))
        + peer.ws.send(we.BytesMessage(data=b"e" * 995, message_finished=False))
        + peer.ws.send(we.BytesMessage(data=b"f" * 5000, message_finished=True))
    )
    assert await ws.receive() == Oversized(b"d" * 10 + b"e" * 14, 1000)
    await peer.stream.send_all(peer.ws.send(we.TextMessage(data="t" * 3000)))
    got = await ws.receive()
    assert isinstance(got, Oversized) and got.prefix == "t" * 256
    # the connection is still usable: a message within the limit comes through
    await peer.stream.send_all(peer.ws.send(we.BytesMessage(data=b"ok")))
    assert await ws.receive() == b"ok"
    assert not ws.closed


async def test_first_partial_never_waits_for_a_client_that_does_not_read(
    start_router, no_handler_errors
) -> None:
    """A client floods pings and stops reading: the reader's pongs hold the send slot and
    the socket fills. The stream's first PARTIAL must not make the stream task wait on
    the socket (flush_now used to, until call_timeout_s, and the stall was booked as an
    adapter ETIMEOUT): the stream ends by write_stall_s, and the adapter is not blamed."""
    router = await start_router(
        adapters={"persona": "builtin:persona?latency_ms=300"},
        write_stall_s=1.0,
        call_timeout_s=20.0,
    )
    client = await _open_ws(router)
    client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    syn = _syn(1, ttl=0)  # no TTL: only write_stall_s may end the stream
    await client.stream.send_all(ws_frame(OP_BINARY, syn))
    ping = ws_frame(OP_PING, b"p" * 125) * 64
    while True:  # until the router stops reading: its pongs cannot leave
        with trio.move_on_after(0.5) as scope:
            await client.stream.send_all(ping)
        if scope.cancelled_caught:
            break
    t0 = trio.current_time()
    with trio.fail_after(15):
        while router.metrics.streams_active.get("gold"):
            await trio.sleep(0.1)
    waited = trio.current_time() - t0
    text = router.metrics.render()
    assert waited < 6, f"the stream task was held {waited:.1f} s (write_stall_s is 1 s)"
    assert (
        'outcome="ETIMEOUT"'
        not in text.split("atp_adapter_calls_total", 1)[-1].split("# HELP", 1)[0]
    ), "a client that does not read was booked as an adapter timeout"
    assert router.admission.in_flight == 0
    await client.aclose()
