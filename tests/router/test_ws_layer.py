"""The router's own WebSocket layer (``atp_proto.router.ws``, wsproto over trio) on real
loopback sockets: control frames, fragmentation, size and protocol faults, closing, the
HTTP side of the handshake, pipelining, and the send path's cancellation safety and
ordering.

Clients used: the independent ``websockets`` package (sync client, run in a worker thread
next to the in-process router), and a raw TCP client that does the upgrade by hand and
builds masked frames byte by byte (RFC 6455 §5.2), so that malformed input can be sent.
The send-path tests drive one server-side :class:`WsConnection` over a real
``socketpair`` and read it with a wsproto client.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as we
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from atp_proto.router import Router, RouterConfig
from atp_proto.transports.base import Oversized, TransportClosed
from atp_proto.transports.ws_server import WsConnection

from ._helpers_e2e import (
    F_FIN,
    T_CAPABILITIES,
    T_ERROR,
    RawFrame,
    build_frame,
    parse_frames,
)
from ._helpers_e2e import (
    syn_frame as _syn,
)
from .conftest import ws_url

# The router's message size limit, as Router._handle_connection computes it.
MAX_MESSAGE = RouterConfig().limits.max_frame_size + 64 * 1024

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _answer(frames: list[RawFrame], sid: int) -> str:
    fins = [f for f in frames if f.stream_id == sid and f.has(F_FIN)]
    assert len(fins) == 1, frames
    body = fins[0].body()
    assert body["type"] == "agent.result.final" and body["content"]["ok"] is True
    return str(body["content"]["answer"])


@pytest.fixture
def no_handler_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The router logs nothing at ERROR (e.g. "connection handler failed"). The handler
    goes on the "atp" logger itself: setup_logging() may have turned propagation off."""
    logger = logging.getLogger("atp")
    caplog.set_level(logging.INFO, logger="atp")
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
    # caplog.records in a fixture's teardown holds only the teardown phase's records
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    records += caplog.records
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert not errors, errors


async def _no_sessions(router: Router, within: float = 3.0) -> None:
    with trio.fail_after(within):
        while router.sessions:
            await trio.sleep(0.01)


# ---------------------------------------------------------------------- raw client


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    mask: bytes = b"\x5a\x13\xc7\x81",
) -> bytes:
    """One client frame, built by hand (RFC 6455 §5.2)."""
    b0 = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    n = len(payload)
    mbit = 0x80 if masked else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 1 << 16:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + body


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def upgrade_request(
    port: int, path: str = "/ws", key: bytes = b"dGhlIHNhbXBsZSBub25jZQ=="
) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: atp.v1\r\n\r\n"
    ).encode()


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes

    @property
    def close_code(self) -> int:
        assert self.opcode == OP_CLOSE and len(self.payload) >= 2, self
        return int(struct.unpack("!H", self.payload[:2])[0])


class RawClient:
    """A TCP connection to the router, read with a hand-written frame parser."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    async def read_head(self) -> tuple[str, dict[str, str]]:
        """An HTTP response head: status line and lower-cased headers."""
        while b"\r\n\r\n" not in self.buf:
            await self._fill()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    async def handshake(self, port: int, pipelined: bytes = b"") -> dict[str, str]:
        key = base64.b64encode(os.urandom(16))
        await self.stream.send_all(upgrade_request(port, key=key) + pipelined)
        status, headers = await self.read_head()
        assert status.startswith("HTTP/1.1 101"), status
        expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        assert headers["sec-websocket-accept"] == expected
        return headers

    async def _need(self, n: int) -> None:
        while len(self.buf) < n:
            await self._fill()

    async def read_frame(self) -> Frame:
        await self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, pos = b1 & 0x7F, 2
        if n == 126:
            await self._need(4)
            n, pos = struct.unpack_from("!H", self.buf, 2)[0], 4
        elif n == 127:
            await self._need(10)
            n, pos = struct.unpack_from("!Q", self.buf, 2)[0], 10
        masked = bool(b1 & 0x80)
        pos += 4 if masked else 0
        await self._need(pos + n)
        payload = bytes(self.buf[pos : pos + n])
        del self.buf[: pos + n]
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0x0F, masked, payload)

    async def read_message(self) -> tuple[int, bytes]:
        """The next data message (answering nothing, failing on close)."""
        opcode, data = -1, b""
        while True:
            f = await self.read_frame()
            assert f.opcode != OP_CLOSE, f"closed: {f}"
            if f.opcode in (OP_PING, OP_PONG):
                continue
            if f.opcode != OP_CONT:
                opcode = f.opcode
            data += f.payload
            if f.fin:
                return opcode, data

    async def collect(self, until_fin: set[int]) -> list[RawFrame]:
        """Binary ATP frames until every stream in ``until_fin`` has ended."""
        frames: list[RawFrame] = []
        open_ = set(until_fin)
        while open_:
            opcode, data = await self.read_message()
            assert opcode == OP_BINARY, (opcode, data[:200])
            for f in parse_frames(data):
                frames.append(f)
                if f.has(F_FIN) or f.type == T_ERROR:
                    open_.discard(f.stream_id)
        return frames

    async def expect_close(self, *, reply: bool = True) -> Frame:
        """Read up to the server's close frame (skipping data), answer it, see TCP end."""
        while True:
            f = await self.read_frame()
            if f.opcode == OP_CLOSE:
                break
        assert not f.masked and f.fin
        if reply:
            # the router may already have dropped TCP: fine
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                await self.stream.send_all(ws_frame(OP_CLOSE, f.payload[:2]))
        await self.expect_eof()
        return f

    async def expect_eof(self) -> bytes:
        """Everything until the router ends the TCP connection (it must, within 5 s)."""
        rest = bytes(self.buf)
        with trio.fail_after(5):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:  # reset: also an end
                    break
                if not chunk:
                    break
                rest += chunk
        self.buf.clear()
        return rest

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _open_ws(router: Router) -> RawClient:
    assert router.ws_port is not None
    client = await RawClient.open(router.ws_port)
    await client.handshake(router.ws_port)
    return client


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run a blocking ``websockets`` client next to the in-process router."""
    return await trio.to_thread.run_sync(fn)


def _ws(router: Router, **kwargs: Any) -> ClientConnection:
    return connect(
        ws_url(router), proxy=None, open_timeout=5, ping_interval=None, compression=None, **kwargs
    )


# ---------------------------------------------------------------------- 1. ping / pong


async def test_ping_answered_by_websockets_client(start_router, no_handler_errors) -> None:
    """A client's ping is answered with a pong carrying the same payload (``websockets``
    resolves a ping's waiter only on a pong with exactly its payload); the session keeps
    working after it."""
    router = await start_router()

    def run() -> tuple[bool, bool, str]:
        with _ws(router) as ws:
            first = ws.ping(b"\x00\x01atp-ping\xff").wait(5)
            second = ws.ping(b"x" * 125).wait(5)  # the largest control payload
            ws.send(_syn(1))
            frames: list[RawFrame] = []
            while not any(f.has(F_FIN) for f in frames):
                frames.extend(parse_frames(ws.recv(timeout=10)))  # type: ignore[arg-type]
            return first, second, _answer(frames, 1)

    first, second, answer = await in_thread(run)
    assert first is True and second is True
    assert "hello" in answer


async def test_ping_pong_payload_raw(start_router, no_handler_errors) -> None:
    """Raw frames: each ping gets exactly one unmasked, final pong, payload byte for byte,
    in order; an empty ping gets an empty pong."""
    router = await start_router()
    client = await _open_ws(router)
    payloads = [b"", bytes(range(125)), b"\xff" * 7]
    await client.stream.send_all(b"".join(ws_frame(OP_PING, p) for p in payloads))
    pongs = [await client.read_frame() for _ in payloads]
    assert [(f.opcode, f.fin, f.masked, f.payload) for f in pongs] == [
        (OP_PONG, True, False, p) for p in payloads
    ]
    await client.stream.send_all(ws_frame(OP_CLOSE, close_payload(1000)))
    assert (await client.expect_close(reply=False)).close_code == 1000
    await _no_sessions(router)


# ---------------------------------------------------------------------- 2. fragmentation


async def test_fragmented_syn_websockets_client(start_router, no_handler_errors) -> None:
    """A SYN sent as one message in five WebSocket frames (``websockets`` sends an iterable
    as fragments) is reassembled: the stream runs to its FIN."""
    router = await start_router()
    syn = _syn(1, "fragmented question")
    cuts = [0, 1, 10, 24, len(syn) - 3, len(syn)]  # inside the header, the ext, the end
    fragments = [syn[a:b] for a, b in itertools.pairwise(cuts)]
    assert b"".join(fragments) == syn and len(fragments) == 5

    def run() -> list[RawFrame]:
        with _ws(router) as ws:
            ws.send(iter(fragments))
            frames: list[RawFrame] = []
            while not any(f.has(F_FIN) for f in frames):
                frames.extend(parse_frames(ws.recv(timeout=10)))  # type: ignore[arg-type]
            return frames

    frames = await in_thread(run)
    assert {f.stream_id for f in frames} == {1}
    assert "fragmented question" in _answer(frames, 1)


async def test_fragmented_binary_with_ping_between_raw(start_router, no_handler_errors) -> None:
    """Raw frames: a SYN split into three frames (binary, continuation, continuation) with
    a ping between two fragments (allowed for control frames): the pong comes, and the
    stream completes with the SYN's prompt."""
    router = await start_router()
    client = await _open_ws(router)
    syn = _syn(5, "split with a ping inside")
    a, b = len(syn) // 3, 2 * len(syn) // 3
    await client.stream.send_all(
        ws_frame(OP_BINARY, syn[:a], fin=False)
        + ws_frame(OP_CONT, syn[a:b], fin=False)
        + ws_frame(OP_PING, b"mid-message")
    )
    pong = await client.read_frame()
    assert (pong.opcode, pong.payload) == (OP_PONG, b"mid-message")
    await client.stream.send_all(ws_frame(OP_CONT, syn[b:], fin=True))
    frames = await client.collect({5})
    assert "split with a ping inside" in _answer(frames, 5)
    await client.aclose()


async def test_fragmented_text_split_inside_utf8_char(start_router, no_handler_errors) -> None:
    """A JSON SYN sent as text in fragments cut in the middle of multi-byte UTF-8
    characters is reassembled and decoded correctly (the answer echoes the prompt)."""
    router = await start_router()
    prompt = "héllo €uro 😀"
    syn = json.dumps(
        {
            "stream_id": "st1",
            "msg_seq": 1,
            "flags": ["SYN"],
            "qos": "gold",
            "payload": {"type": "agent.task", "content": {"prompt": prompt}},
        },
        ensure_ascii=False,
    ).encode()
    i = syn.index("é".encode()) + 1  # between the two bytes of é
    j = syn.index("😀".encode()) + 2  # inside the 4-byte emoji
    client = await _open_ws(router)
    await client.stream.send_all(
        ws_frame(OP_TEXT, syn[:i], fin=False)
        + ws_frame(OP_CONT, syn[i:j], fin=False)
        + ws_frame(OP_CONT, syn[j:], fin=True)
    )
    replies = []
    while not replies or "FIN" not in replies[-1]["flags"]:
        opcode, data = await client.read_message()
        assert opcode == OP_TEXT
        replies.append(json.loads(data.decode()))
    final = replies[-1]
    assert final["stream_id"] == "st1"
    assert final["payload"]["type"] == "agent.result.final"
    assert prompt in final["payload"]["content"]["answer"]
    await client.aclose()


# ---------------------------------------------------------------------- 3. size limit


def _send_expect_close(
    router: Router, message: bytes | list[bytes]
) -> tuple[int | None, list[RawFrame]]:
    """Send one message (a list: as fragments); the close code received, and the ATP
    frames that came before it."""
    frames: list[RawFrame] = []
    with _ws(router, max_size=None) as ws:
        ws.send(iter(message) if isinstance(message, list) else message)
        try:
            while True:
                msg = ws.recv(timeout=10)
                if isinstance(msg, bytes):
                    frames.extend(parse_frames(msg))
        except ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd else None), frames


def _etoobig_on_stream_0(frames: list[RawFrame]) -> None:
    assert [(f.type, f.stream_id, f.ext["error"]["code"]) for f in frames] == [
        (T_ERROR, 0, "ETOOBIG")
    ], frames


async def test_message_over_limit_closes_1009(start_router, no_handler_errors) -> None:
    """[ATP-WS-011, ATP-WS-012] A binary message of max_message_size + 1 bytes
    (limits.max_frame_size + 64 KiB; 1 MiB + 64 KiB by default) whose start is no frame
    header over max_frame_size: ERROR ETOOBIG on stream 0, then close 1009; the session
    ends."""
    assert MAX_MESSAGE == (1 << 20) + (64 << 10)
    router = await start_router()
    code, frames = await in_thread(lambda: _send_expect_close(router, b"\x00" * (MAX_MESSAGE + 1)))
    assert code == 1009
    _etoobig_on_stream_0(frames)
    await _no_sessions(router)


async def test_fragmented_message_over_limit_closes_1009(start_router, no_handler_errors) -> None:
    """[ATP-WS-012] The limit is on the reassembled message: 17 fragments of 64 KiB plus a
    1-byte fragment (each far below the limit, together max_message_size + 1) get ERROR
    ETOOBIG on stream 0 and close with 1009."""
    router = await start_router()
    frag = 64 << 10
    parts = [b"\x00" * frag] * (MAX_MESSAGE // frag) + [b"\x00"]
    assert sum(map(len, parts)) == MAX_MESSAGE + 1
    code, frames = await in_thread(lambda: _send_expect_close(router, parts))
    assert code == 1009
    _etoobig_on_stream_0(frames)


async def test_message_at_limit_reaches_the_session(start_router, no_handler_errors) -> None:
    """Exactly max_message_size bytes is not a WebSocket-level fault: the message reaches
    the ATP layer, which answers its bad content with ERROR EPROTO and 1002, not 1009."""
    router = await start_router()
    code, frames = await in_thread(lambda: _send_expect_close(router, b"\x00" * MAX_MESSAGE))
    assert code == 1002
    errors = [f for f in frames if f.type == T_ERROR and f.stream_id == 0]
    assert errors and errors[-1].ext["error"]["code"] == "EPROTO"


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


# ---------------------------------------------------------------------- 8-9. send path

SMALL_BUF = 4096
#: a broken send path tends to hang (a torn frame never completes): fail fast instead
SEND_DEADLINE = pytest.mark.deadline(10)


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


def _pattern(tag: int, size: int) -> bytes:
    """Bytes whose every 4-byte word says which message and where: any torn or shifted
    framing shows up as a mismatch."""
    words = size // 8 + 1
    return b"".join(struct.pack("!II", tag, i) for i in range(words))[:size]


async def _blocked_then_cancelled(ws: WsConnection, message: bytes) -> None:
    """Start ``ws.send(message)``, let it block on the full socket, cancel it."""
    scope = trio.CancelScope()
    result: list[bool] = []

    async def sender() -> None:
        with scope:
            await ws.send(message)
        result.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    assert result == [True], "the send should have blocked on the full socket"


@SEND_DEADLINE
@pytest.mark.parametrize("then", ["send", "flush"])
async def test_cancelled_send_keeps_framing(then: str) -> None:
    """A large send blocked by a peer that does not read, then cancelled, leaves part of
    its frame unsent; the next send (or flush) sends that remainder first, so the peer
    parses the cancelled message complete and then the next one — no torn framing."""
    ws, peer = await _ws_pair()
    big = _pattern(1, 2 << 20)
    after = _pattern(2, 70_000)
    await _blocked_then_cancelled(ws, big)
    assert not ws.closed
    # the cancellation really cut the message: what reached the peer is a part of it
    # (the socket buffers hold a few KiB), so the next bytes must be its remainder
    assert peer.bytes_read == 0
    with trio.move_on_after(0.1):
        while True:
            peer._feed(bytes(await peer.stream.receive_some(65536)))
    assert peer.messages == [] and 0 < peer.bytes_read < len(big)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, 2)
        if then == "flush":
            await ws.flush()  # only the remainder: the peer gets the first message whole
            with trio.fail_after(5):
                while len(peer.messages) < 1:
                    await trio.sleep(0.01)
            assert peer.messages == [big]
            await ws.send(after)
        else:
            await ws.send(after)
            await ws.flush()
    assert len(peer.messages) == 2
    assert peer.messages[0] == big  # complete: byte-identical
    assert peer.messages[1] == after
    assert peer.closes == []
    await ws.abort()


@SEND_DEADLINE
async def test_cancelled_twice_then_close(nursery: trio.Nursery) -> None:
    """Two sends cancelled in a row (the second is cancelled while still sending the
    first's remainder): both messages reach the peer whole, then a close frame with the
    code given; after it, send raises TransportClosed."""
    ws, peer = await _ws_pair()
    m1, m2 = _pattern(1, 1 << 20), _pattern(2, 1 << 20)
    await _blocked_then_cancelled(ws, m1)
    await _blocked_then_cancelled(ws, m2)

    async def read_and_answer_close() -> None:
        while not peer.closes:
            data = await peer.stream.receive_some(65536)
            if not data:
                return
            peer._feed(bytes(data))
        await peer.stream.send_all(peer.ws.send(we.CloseConnection(code=1000)))

    nursery.start_soon(read_and_answer_close)
    with trio.fail_after(5):
        await ws.close(4001, "bye")
    assert peer.messages == [m1, m2]
    assert peer.closes == [4001]
    with pytest.raises(TransportClosed):
        await ws.send(b"late")


@SEND_DEADLINE
async def test_send_cancelled_while_waiting_for_its_turn() -> None:
    """A send cancelled while it waits behind another sender is not lost and not torn:
    its message goes out whole right after the sender ahead (with the next send, or
    flush), then the later send (the Transport contract: a cancelled call leaves the
    connection usable; the session relies on it not to lose ATP frames it already took
    from its Connection)."""
    ws, peer = await _ws_pair()
    first, waited, last = _pattern(1, 1 << 20), _pattern(2, 50_000), _pattern(3, 30_000)
    waiting = trio.CancelScope()
    outcome: list[bool] = []

    async def waiter() -> None:
        with waiting:
            await ws.send(waited)
        outcome.append(waiting.cancelled_caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.send, first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        waiting.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == [True]
        nursery.start_soon(peer.read_until, 1)
    assert peer.messages == [first]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, 3)
        await ws.send(last)
    assert peer.messages == [first, waited, last]
    assert peer.closes == []


@SEND_DEADLINE
@pytest.mark.parametrize("cancelled", ["B", "C", "BC"])
async def test_cancelled_waiters_keep_call_order(cancelled: str) -> None:
    """Calls A (sending, blocked on the socket), B and C (waiting their turn); then B, C
    or both are cancelled while waiting. Nothing is lost and nothing overtakes: the peer
    gets A, B, C whole and in call order ("concurrent calls leave in call order",
    Transport.send), once a flush (or a later send) lets the cancelled bytes out."""
    ws, peer = await _ws_pair()
    msgs = {"A": _pattern(1, 1 << 20), "B": _pattern(2, 50_000), "C": _pattern(3, 30_000)}
    scopes = {name: trio.CancelScope() for name in "BC"}
    caught: dict[str, bool] = {}

    async def sender(name: str) -> None:
        with scopes[name]:
            await ws.send(msgs[name])
        caught[name] = scopes[name].cancelled_caught

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.send, msgs["A"])
        await trio.testing.wait_all_tasks_blocked()
        for name in "BC":
            nursery.start_soon(sender, name)
            await trio.testing.wait_all_tasks_blocked()
        for name in cancelled:
            scopes[name].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert caught == dict.fromkeys(cancelled, True)
        nursery.start_soon(peer.read_until, 3)
        await ws.flush()
    names: dict[bytes | str, str] = {m: n for n, m in msgs.items()}
    assert [names.get(m, "?") for m in peer.messages] == ["A", "B", "C"]
    assert caught == {"B": "B" in cancelled, "C": "C" in cancelled}
    assert peer.closes == []


@SEND_DEADLINE
async def test_concurrent_senders_keep_call_order() -> None:
    """Three tasks sending at once on one connection (bytes of many sizes and text) while
    the peer reads in small slow chunks: every message arrives intact, in the order of
    the send calls."""
    ws, peer = await _ws_pair()
    calls: list[bytes | str] = []
    sizes = [5, 200_000, 1, 70_000, 3_000, 126, 65_536, 100_000]

    async def sender(task: int) -> None:
        for i, size in enumerate(sizes):
            msg: bytes | str
            if i % 4 == 3:
                msg = f"task {task} message {i} é€😀 " * (size // 20 + 1)
            else:
                msg = _pattern(task * 100 + i, size)
            calls.append(msg)  # no checkpoint between this and send claiming its turn
            await ws.send(msg)
            if i % 3 == 0:
                await trio.sleep(0)

    total = 3 * len(sizes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, total, 4096, 0.0005)
        for task in range(3):
            nursery.start_soon(sender, task)
    assert len(calls) == total
    assert len(peer.messages) == total
    assert [len(m) for m in peer.messages] == [len(m) for m in calls]
    assert peer.messages == calls
    # the tasks really interleaved (otherwise the order test proves little)
    firsts = [calls.index(_pattern(t * 100, 5)) for t in range(3)]
    assert max(firsts) < len(sizes), firsts


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


# ------------------------------------------------- regressions from the review of ws.py


async def test_empty_fragment_flood_holds_no_memory(start_router, no_handler_errors) -> None:
    """An unfinished binary message followed by 100,000 empty continuation frames (6
    bytes each on the wire): memory follows payload bytes, not the fragment count (it
    used to keep a list entry per fragment, unbounded by the 1009 size limit). The
    session still works afterwards."""
    router = await start_router()
    client = await _open_ws(router)
    syn = _syn(1, prompt="after the flood")
    await client.stream.send_all(ws_frame(OP_BINARY, syn[:10], fin=False))
    flood = ws_frame(OP_CONT, b"", fin=False) * 1000
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(100):
            await client.stream.send_all(flood)
        await client.stream.send_all(ws_frame(OP_CONT, syn[10:], fin=True))
        frames = await client.collect({1})
        grown = tracemalloc.get_traced_memory()[1] - base  # the peak, mid-message
    finally:
        tracemalloc.stop()
    assert "after the flood" in _answer(frames, 1)
    assert grown < 2_000_000, f"router memory grew by {grown} bytes for empty fragments"
    await client.aclose()


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
