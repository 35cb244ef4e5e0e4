"""The client library on the shared session driver: its own core's timers fire.

Before issue 10 the client drove the core itself and never called ``next_deadline`` /
``handle_timer``, so a client-side TTL, heartbeats and the idle timeout never fired. Here
the peer is a silent fake router on a real loopback socket (the server side of
:mod:`atp_proto.transports.ws_server` and a raw :class:`Connection`): whatever the client
does is its own doing, not an answer from a router. Short real times (TTL is whole seconds
on the wire, ATP-TIME-001).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio

from atp_proto.client import ConnectionLost, StreamError, connect
from atp_proto.frames import (
    ATPError,
    Connection,
    ConnectionClosed,
    ErrorCode,
    Event,
    Limits,
    Role,
    StreamOpened,
    StreamReset,
)
from atp_proto.transports.ws_server import WsConnection


@dataclass
class FakeRouter:
    """Accepts one WebSocket session and feeds a raw router-role core; answers only what
    the core answers by itself (heartbeat acks, CAPABILITIES) when ``answer`` is set."""

    answer: bool = True
    drop_on_syn: bool = False
    events: list[Event] = field(default_factory=list)
    close_code: int | None = None
    port: int = 0
    gone: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        ws = WsConnection(stream, max_message_size=1 << 22)
        try:
            request = await ws.read_request()
            assert request is not None
            await ws.accept(None)
            conn = Connection(Role.ROUTER, limits=Limits(), now=trio.current_time())
            while True:
                try:
                    message = await ws.receive()
                except Exception:
                    break
                now = trio.current_time()
                assert isinstance(message, bytes)
                events = conn.receive_message(message, now)
                self.events += events
                if self.drop_on_syn and any(isinstance(e, StreamOpened) for e in events):
                    break
                if self.answer:
                    for out in conn.data_to_send(now):
                        await ws.send(out)
            self.close_code = ws.peer_close_code
        finally:
            await ws.abort()
            self.gone.set()

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


Start = Callable[..., Awaitable[FakeRouter]]


@pytest.fixture
async def fake_router(nursery: trio.Nursery) -> Start:
    async def start(**kwargs: bool) -> FakeRouter:
        fake = FakeRouter(**kwargs)
        listeners = await nursery.start(trio.serve_tcp, fake.handle, 0)
        fake.port = listeners[0].socket.getsockname()[1]
        return fake

    return start


@pytest.mark.deadline(10)
async def test_client_side_ttl_fires(fake_router: Start) -> None:
    """A stream with ttl=1 to a peer that never answers ends with ETIMEOUT from the
    client's own core, and the client tells the peer (an ERROR on the stream)."""
    fake = await fake_router()
    async with connect(f"ws://127.0.0.1:{fake.port}/ws") as client:
        start = trio.current_time()
        async with client.stream("hello", ttl=1) as st:
            with pytest.raises(StreamError) as err:
                async for _ in st:
                    pass
        elapsed = trio.current_time() - start
        assert err.value.code == ErrorCode.ETIMEOUT
        assert isinstance(err.value, ATPError) and err.value.stream_id == st.stream_id
        assert 0.9 <= elapsed < 3, elapsed
        with trio.fail_after(2):
            while not fake.of(StreamReset):
                await trio.sleep(0.01)
    (reset,) = fake.of(StreamReset)
    assert isinstance(reset, StreamReset)
    assert reset.stream_id == st.stream_id and reset.code == ErrorCode.ETIMEOUT and reset.by_peer


@pytest.mark.deadline(10)
async def test_client_heartbeats_fire_and_are_acknowledged(fake_router: Start) -> None:
    fake = await fake_router()
    async with connect(f"ws://127.0.0.1:{fake.port}/ws", heartbeat_s=0.05) as client:
        with trio.fail_after(3):
            while client.heartbeat_rtt is None:
                await trio.sleep(0.01)
        assert 0 <= client.heartbeat_rtt < 1


@pytest.mark.deadline(10)
async def test_no_heartbeat_unless_asked(fake_router: Start) -> None:
    fake = await fake_router()
    async with connect(f"ws://127.0.0.1:{fake.port}/ws") as client:
        await trio.sleep(0.3)
        assert client.heartbeat_rtt is None


@pytest.mark.deadline(10)
async def test_client_idle_timeout_closes_the_session(fake_router: Start) -> None:
    """No stream and nothing received for idle_timeout_ms: the client closes with
    ETIMEOUT (an ERROR frame, then WebSocket close 4000 + its registry index)."""
    fake = await fake_router(answer=False)
    async with connect(
        f"ws://127.0.0.1:{fake.port}/ws", limits=Limits(idle_timeout_ms=200)
    ) as client:
        with trio.fail_after(3):
            await fake.gone.wait()
        assert client.closed is not None and client.closed.code == ErrorCode.ETIMEOUT
        with pytest.raises(StreamError) as err:
            async with client.stream("late"):
                pass
        assert err.value.code == ErrorCode.ETIMEOUT
    (closed,) = fake.of(ConnectionClosed)
    assert isinstance(closed, ConnectionClosed) and closed.code == ErrorCode.ETIMEOUT
    assert fake.close_code == 4000 + list(ErrorCode).index(ErrorCode.ETIMEOUT)


@pytest.mark.deadline(10)
async def test_connection_lost_under_a_stream(fake_router: Start) -> None:
    """The peer drops TCP while a stream is open: the stream raises ConnectionLost, an
    ATPError with a registry code (no ECLOSED), still caught as StreamError."""
    fake = await fake_router(drop_on_syn=True)
    async with connect(f"ws://127.0.0.1:{fake.port}/ws") as client:
        async with client.stream("hello") as st:
            with pytest.raises(ConnectionLost) as err:
                async for _ in st:
                    pass
    assert isinstance(err.value, StreamError) and isinstance(err.value, ATPError)
    assert err.value.code in set(ErrorCode)
    assert "connection closed" in err.value.message
