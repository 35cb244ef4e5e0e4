"""The shared raw WebSocket client (``atp_proto.transports.ws_client``) against a real
router and against a silent port: the upgrade, refusals with their status and body, the
connect timeout, and messages both ways after the upgrade."""

from __future__ import annotations

import pytest
import trio

from atp_proto.frames import Connection, FrameType, Role, decode_frames
from atp_proto.transports import TransportClosed
from atp_proto.transports.ws_client import ATP_SUBPROTOCOL, HandshakeRefused, connect_ws
from tests.router.conftest import ws_url


async def test_upgrade_then_capabilities_both_ways(start_router, no_handler_errors) -> None:
    router = await start_router()
    ws = await connect_ws(ws_url(router), subprotocols=(ATP_SUBPROTOCOL,))
    conn = Connection(Role.CLIENT, now=trio.current_time())
    conn.send_capabilities()
    (caps,) = conn.data_to_send(trio.current_time())
    await ws.send(caps)
    with trio.fail_after(5):
        reply = await ws.receive()
    assert isinstance(reply, bytes)  # atp.v1 offered: binary session frames (ATP-WS-010)
    assert decode_frames(reply)[0].type == FrameType.CAPABILITIES
    await ws.close(1000, "bye")
    assert ws.closed
    with pytest.raises(TransportClosed):
        await ws.send(b"late")


async def test_refusal_carries_status_and_body(start_router, no_handler_errors) -> None:
    router = await start_router()
    url = ws_url(router).replace("/ws", "/nope")
    with pytest.raises(HandshakeRefused) as err:
        await connect_ws(url)
    assert err.value.status == 404 and b"/ws" in err.value.body


async def test_connect_timeout_is_a_timeout_error(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, silent, 0)
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        await connect_ws(f"ws://127.0.0.1:{port}/ws", connect_timeout=0.2)


async def test_only_websocket_urls() -> None:
    with pytest.raises(ValueError, match="ws://"):
        await connect_ws("http://127.0.0.1:1/ws")
