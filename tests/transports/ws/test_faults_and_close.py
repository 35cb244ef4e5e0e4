"""The WebSocket transport in a real router: protocol faults close with the right code,
a client's close is answered and TCP ends (moved from tests/router/test_ws_layer.py,
sections 4-5).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.router._helpers_e2e import (
    F_FIN,
    parse_frames,
)
from tests.router._helpers_e2e import (
    syn_frame as _syn,
)

from ._raw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    _answer,
    _no_sessions,
    _open_ws,
    _ws,
    close_payload,
    in_thread,
    ws_frame,
)

# ---------------------------------------------------------------------- 4. protocol faults


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(ws_frame(OP_TEXT, b"ok \xff\xfe not utf-8"), 1007, id="invalid-utf8-text"),
        pytest.param(
            ws_frame(OP_TEXT, "é".encode()[:1], fin=False) + ws_frame(OP_CONT, b"A"),
            1007,
            id="utf8-char-cut-across-fragments",
        ),
        pytest.param(ws_frame(OP_BINARY, _syn(1), rsv=0b100), 1002, id="rsv1-set"),
        pytest.param(ws_frame(OP_BINARY, _syn(1), rsv=0b001), 1002, id="rsv3-set"),
        pytest.param(ws_frame(0x3, b"abc"), 1002, id="reserved-data-opcode-3"),
        pytest.param(ws_frame(0xB, b"abc"), 1002, id="reserved-control-opcode-b"),
        pytest.param(ws_frame(OP_BINARY, _syn(1), masked=False), 1002, id="unmasked"),
        pytest.param(ws_frame(OP_CONT, b"abc"), 1002, id="continuation-without-start"),
        pytest.param(ws_frame(OP_PING, b"p", fin=False), 1002, id="fragmented-ping"),
        pytest.param(ws_frame(OP_PING, b"p" * 126), 1002, id="ping-over-125"),
    ],
)
async def test_protocol_fault_closes_with_code(
    start_router, no_handler_errors, frame: bytes, code: int
) -> None:
    """A frame wsproto cannot accept closes the connection with the RFC's code (1007 for
    invalid UTF-8 in text, 1002 for protocol errors); the router ends TCP and the session."""
    router = await start_router()
    client = await _open_ws(router)
    await client.stream.send_all(frame)
    close = await client.expect_close()
    assert close.close_code == code
    await _no_sessions(router)


async def test_fault_after_good_traffic_still_closes(start_router, no_handler_errors) -> None:
    """A protocol fault on a connection that already carried a whole stream closes it the
    same way (1002), and other sessions are untouched."""
    router = await start_router()
    bystander = await _open_ws(router)
    client = await _open_ws(router)
    await client.stream.send_all(ws_frame(OP_BINARY, _syn(1)))
    await client.collect({1})
    await client.stream.send_all(ws_frame(OP_BINARY, b"x", rsv=0b010))
    assert (await client.expect_close()).close_code == 1002
    await bystander.stream.send_all(ws_frame(OP_BINARY, _syn(3, "still here")))
    assert "still here" in _answer(await bystander.collect({3}), 3)
    await bystander.aclose()


# ---------------------------------------------------------------------- 5. client close


@pytest.mark.parametrize(
    ("payload", "reply_code"),
    [
        pytest.param(close_payload(1000, "done"), 1000, id="1000-with-reason"),
        pytest.param(close_payload(1001), 1001, id="1001-going-away"),
        pytest.param(b"", 1005, id="empty-close"),
    ],
)
async def test_client_close_is_answered_then_tcp_ends(
    start_router, no_handler_errors, payload: bytes, reply_code: int
) -> None:
    """A client-initiated close gets one close frame back echoing the code (RFC 6455
    §5.5.1; a close without a code is answered with an empty close body), nothing after
    it, and the TCP connection ends; the session is gone."""
    router = await start_router()
    client = await _open_ws(router)
    await client.stream.send_all(ws_frame(OP_BINARY, _syn(1)))
    await client.collect({1})
    assert len(router.sessions) == 1
    await client.stream.send_all(ws_frame(OP_CLOSE, payload))
    reply = await client.read_frame()
    assert reply.opcode == OP_CLOSE and reply.fin and not reply.masked
    if reply_code == 1005:
        assert reply.payload == b""
    else:
        assert reply.close_code == reply_code
    assert await client.expect_eof() == b""  # nothing after the close frame
    await _no_sessions(router)


async def test_websockets_client_close_is_clean(start_router, no_handler_errors) -> None:
    """``websockets`` closing normally sees the router's close reply with code 1000 (its
    close handshake completes instead of timing out)."""
    router = await start_router()

    def run() -> tuple[int | None, int | None]:
        with _ws(router, close_timeout=3) as ws:
            ws.send(_syn(1))
            while not any(f.has(F_FIN) for f in parse_frames(ws.recv(timeout=10))):  # type: ignore[arg-type]
                pass
            ws.close(1000, "bye")
            rcvd = ws.protocol.close_rcvd
            return ws.close_code, rcvd.code if rcvd else None

    start = trio.current_time()
    close_code, rcvd = await in_thread(run)
    assert (close_code, rcvd) == (1000, 1000)
    assert trio.current_time() - start < 2.5  # no close_timeout wait
    await _no_sessions(router)
