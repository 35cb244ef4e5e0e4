"""The WebSocket transport's HTTP side in a real router: plain HTTP, bad versions,
garbage, wrong paths, handshake timeouts, frames pipelined with the upgrade (moved from
tests/router/test_ws_layer.py, sections 6-7, and the reset-during-handshake regression).
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

import pytest
import trio
import trio.testing

from atp_proto.transports.ws_server import WsConnection
from tests.router._helpers_e2e import (
    T_CAPABILITIES,
    build_frame,
)
from tests.router._helpers_e2e import (
    syn_frame as _syn,
)

from ._raw import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    RawClient,
    _answer,
    _no_sessions,
    _open_ws,
    close_payload,
    in_thread,
    upgrade_request,
    ws_frame,
)

# ---------------------------------------------------------------------- 6. HTTP side


async def test_plain_http_get_gets_400_and_close(start_router, no_handler_errors) -> None:
    """A GET without the Upgrade headers on the WebSocket port: ``HTTP/1.1 400`` with a
    body saying why, then the router closes the connection; no session is made."""
    router = await start_router()
    client = await RawClient.open(router.ws_port)
    await client.stream.send_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers = await client.read_head()
    assert status.startswith("HTTP/1.1 400"), status
    body = await client.expect_eof()
    assert body.startswith(b"not a WebSocket handshake")
    assert int(headers["content-length"]) == len(body)
    assert not router.sessions


async def test_unsupported_websocket_version_gets_426(start_router, no_handler_errors) -> None:
    """RFC 6455 4.4: a Sec-WebSocket-Version the router does not speak gets 426 Upgrade
    Required naming version 13, then the connection closes; no session is made."""
    router = await start_router()
    client = await RawClient.open(router.ws_port)
    request = upgrade_request(router.ws_port, key=base64.b64encode(os.urandom(16)))
    request = request.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8")
    assert b"Sec-WebSocket-Version: 8" in request
    await client.stream.send_all(request)
    status, headers = await client.read_head()
    assert status.startswith("HTTP/1.1 426"), status
    assert headers["sec-websocket-version"] == "13"
    body = await client.expect_eof()
    assert int(headers["content-length"]) == len(body)
    assert not router.sessions


async def test_garbage_request_gets_400(start_router, no_handler_errors) -> None:
    """Bytes that are not HTTP at all: a 400 too, and the connection closes."""
    router = await start_router()
    client = await RawClient.open(router.ws_port)
    await client.stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS?\r\n\r\n")
    status, _ = await client.read_head()
    assert status.startswith("HTTP/1.1 400"), status
    await client.expect_eof()


async def test_wrong_path_gets_404_and_close(start_router, no_handler_errors) -> None:
    """(test_e2e_ops covers the status; here the raw side) an upgrade to another path:
    ``HTTP/1.1 404`` naming the right path, Content-Length matching, then TCP closes."""
    router = await start_router()
    client = await RawClient.open(router.ws_port)
    await client.stream.send_all(upgrade_request(router.ws_port, path="/nope?x=1"))
    status, headers = await client.read_head()
    assert status.startswith("HTTP/1.1 404"), status
    assert "sec-websocket-accept" not in headers
    body = await client.expect_eof()
    assert int(headers["content-length"]) == len(body)
    assert b"/nope" in body and b"/ws" in body
    assert not router.sessions


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="silent"),
        pytest.param(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websock", id="half-request"),
    ],
)
async def test_handshake_timeout_disconnects(start_router, no_handler_errors, sent: bytes) -> None:
    """A client that connects and sends nothing (or never finishes its request) is
    disconnected once handshake_timeout_s (0.5 s here) has passed, without an answer."""
    router = await start_router(handshake_timeout_s=0.5)
    client = await RawClient.open(router.ws_port)
    start = trio.current_time()
    if sent:
        await client.stream.send_all(sent)
    rest = await client.expect_eof()  # fails after 5 s
    elapsed = trio.current_time() - start
    assert rest == b""
    assert 0.4 <= elapsed < 3.0, elapsed
    # a well-behaved client still gets in afterwards
    ok = await _open_ws(router)
    await ok.aclose()


# ---------------------------------------------------------------------- 7. pipelining


async def test_frames_pipelined_with_handshake(start_router, no_handler_errors) -> None:
    """The upgrade request and a masked binary frame (CAPABILITIES + SYN) in one TCP
    write: after the 101, the router answers the CAPABILITIES and runs the stream (wsproto
    leaves such bytes in h11's buffer; WsConnection.accept must hand them on)."""
    router = await start_router()
    caps = build_frame(T_CAPABILITIES, 0, 0, ext={"caps": {"versions": [1]}})
    client = await RawClient.open(router.ws_port)
    try:
        await client.handshake(
            router.ws_port, pipelined=ws_frame(OP_BINARY, caps + _syn(1, "pipelined"))
        )
        with trio.fail_after(2):  # the answer takes milliseconds when it comes
            frames = await client.collect({1})
    finally:
        await client.aclose()
    assert [f.type for f in frames if f.stream_id == 0] == [T_CAPABILITIES]
    assert "pipelined" in _answer(frames, 1)


async def test_control_frames_pipelined_with_handshake(start_router, no_handler_errors) -> None:
    """Upgrade request, a ping and a close (1000) in one TCP write: the 101, then the
    pong with the ping's payload, then the close reply 1000, then the end of TCP."""
    router = await start_router()
    client = await RawClient.open(router.ws_port)
    await client.handshake(
        router.ws_port,
        pipelined=ws_frame(OP_PING, b"early ping") + ws_frame(OP_CLOSE, close_payload(1000)),
    )
    with trio.fail_after(2):
        pong = await client.read_frame()
        close = await client.read_frame()
    assert (pong.opcode, pong.payload) == (OP_PONG, b"early ping")
    assert close.close_code == 1000
    assert await client.expect_eof() == b""
    await _no_sessions(router)


async def test_frame_right_after_handshake_response(start_router, no_handler_errors) -> None:
    """Control for the pipelined case: the same frame sent as soon as the 101 is read
    (a separate TCP write) is answered."""
    router = await start_router()
    caps = build_frame(T_CAPABILITIES, 0, 0, ext={"caps": {"versions": [1]}})
    client = await _open_ws(router)
    await client.stream.send_all(ws_frame(OP_BINARY, caps + _syn(1, "right after")))
    frames = await client.collect({1})
    assert [f.type for f in frames if f.stream_id == 0] == [T_CAPABILITIES]
    assert "right after" in _answer(frames, 1)
    await client.aclose()


# ------------------------------------------------- regression from the review of ws.py


async def test_client_reset_during_handshake_is_quiet(
    start_router, no_handler_errors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client sends its upgrade request and resets the connection before the 101 is
    written: the handler returns quietly (it used to log "connection handler failed")."""
    original = WsConnection.accept

    async def slow_accept(self: WsConnection, subprotocol: str | None) -> None:
        await trio.sleep(0.3)  # widen the window: the RST lands before the 101
        await original(self, subprotocol)

    monkeypatch.setattr(WsConnection, "accept", slow_accept)
    router = await start_router()
    assert router.ws_port is not None
    port = router.ws_port

    def reset_after_request() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(upgrade_request(port, key=base64.b64encode(os.urandom(16))))
        time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST

    await in_thread(reset_after_request)
    await trio.sleep(0.6)
    await _no_sessions(router)
