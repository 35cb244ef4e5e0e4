"""The raw WebSocket client of the WebSocket transport tests (moved from
tests/router/test_ws_layer.py): a TCP connection that does the upgrade by hand and builds
masked frames byte by byte (RFC 6455 §5.2), so that malformed input can be sent, read
with a hand-written frame parser (so the tests also check the router's framing: masking,
RSV bits, FIN). Deliberately not :mod:`atp_proto.transports.ws_client`: a client built on
wsproto cannot send what wsproto refuses to build.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
from websockets.sync.client import ClientConnection, connect

from atp_proto.router import Router, RouterConfig
from tests.router._helpers_e2e import (
    F_FIN,
    T_ERROR,
    RawFrame,
    parse_frames,
)
from tests.router.conftest import ws_url

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
