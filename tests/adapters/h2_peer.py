"""A hand-written HTTP/2 gRPC server for the trio client's wire tests, over real loopback TCP.

The server side is crafted in the test: ``h2`` (server mode) does the handshake, reads the
request and tracks the WINDOW_UPDATEs the client sends; every response frame is serialized
byte-exactly with ``hyperframe`` and written raw, so the server can send what a real
server would never send (padding, CONTINUATION, bytes dribbled across reads, frames that
break flow control or the frame size limit). The tests using it
(``test_grpc_framing``, ``test_grpc_fastpath``, ``test_grpc_errors``,
``test_grpc_flow_control``) check that
the client's own frame parser (``_h2_fastpath.feed`` and its fast path for DATA) gives
the same result as ``h2`` in every case, fails cleanly on a protocol violation, and never
grants the server more credit than its consumer has used.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
import trio.testing
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame

from atp_proto.adapters import Chunk, TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.grpc.status import method_path
from atp_proto.adapters.proto import codec

DEFAULT_WINDOW = 65535  # HTTP/2 initial window (connection, and the client's streams)
MAX_FRAME = 16384  # the client's SETTINGS_MAX_FRAME_SIZE (HTTP/2 default)
REQ = TaskRequest("t", "hello wire", request_id="rid-7")
RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


# ------------------------------------------------------------------ messages and frames


def grpc_msg(body: bytes) -> bytes:
    """gRPC length-prefixed message: flag 0 (uncompressed), 4-byte length, body."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


def make_chunks(n: int, size: int = 24, *, big: Iterable[int] = ()) -> list[Chunk]:
    """``n`` distinct chunks; those at the indexes in ``big`` carry 70 000 characters,
    more than a stream window."""
    big = set(big)
    out = []
    for i in range(n):
        text = f"{i}:" + ("y" * 70_000 if i in big else chr(97 + i % 26) * size)
        last = i == n - 1
        out.append(Chunk(text, 0.25, i + 1, 7 * (i + 1), last, "stop" if last else ""))
    return out


def chunk_msg(chunk: Chunk) -> bytes:
    return grpc_msg(codec.encode_chunk(chunk))


def sized_chunk_msg(size: int, i: int) -> tuple[Chunk, bytes]:
    """A chunk whose gRPC message is exactly ``size`` bytes long."""
    pad = max(0, size - 20)
    while True:
        chunk = Chunk(f"{i}:" + "z" * pad, 0.5, i, i)
        msg = chunk_msg(chunk)
        if len(msg) == size:
            return chunk, msg
        pad += size - len(msg)
        assert pad >= 0, size


def data_frame(sid: int, payload: bytes, *, pad: int | None = None, end: bool = False) -> bytes:
    flags = []
    if pad is not None:
        flags.append("PADDED")
    if end:
        flags.append("END_STREAM")
    frame = DataFrame(sid, data=payload, flags=flags)
    if pad is not None:
        frame.pad_length = pad
    return frame.serialize()


def flow_len(payload: bytes, pad: int | None) -> int:
    return len(payload) + (pad + 1 if pad is not None else 0)


def header_frames(block: bytes, sid: int, *, end_stream: bool, cuts: Iterable[int] = ()) -> bytes:
    """One HEADERS frame carrying ``block``, or (with ``cuts``, offsets into the block) a
    HEADERS frame without END_HEADERS followed by CONTINUATION frames."""
    bounds = [0, *sorted(cuts), len(block)]
    pieces = [block[a:b] for a, b in itertools.pairwise(bounds)]
    out = []
    for i, piece in enumerate(pieces):
        flags = ["END_HEADERS"] if i == len(pieces) - 1 else []
        if i == 0:
            if end_stream:
                flags.append("END_STREAM")
            out.append(HeadersFrame(sid, data=piece, flags=flags).serialize())
        else:
            out.append(ContinuationFrame(sid, data=piece, flags=flags).serialize())
    return b"".join(out)


# ------------------------------------------------------------------ the crafted server


@dataclass
class Request:
    sid: int
    headers: dict[bytes, bytes]
    body: bytearray = field(default_factory=bytearray)


class Peer:
    """The server side of one accepted connection.

    ``pump`` feeds everything the client sends to an ``h2`` server connection and keeps
    count of the flow-control credit the client grants; the test writes response frames
    raw, and ``send_data`` keeps its own count of what it sent, so ``window()`` is exactly
    what the client has allowed so far.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.send_lock = trio.Lock()
        self.initial_window = DEFAULT_WINDOW  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.stream_credit: dict[int, int] = defaultdict(int)  # WINDOW_UPDATE per stream
        self.conn_credit = 0  # connection-level WINDOW_UPDATEs
        self.sent: dict[int, int] = defaultdict(int)  # flow-controlled bytes sent per stream
        self.sent_conn = 0
        self.requests: dict[int, Request] = {}
        self.complete: list[int] = []  # request streams fully received
        self.resets: dict[int, int] = {}  # RST_STREAM from the client: stream -> code
        self.goaway: list[int] = []  # GOAWAY error codes from the client
        self.blocked = False  # send_data is waiting for credit
        self.closed = trio.Event()  # the client closed the connection
        self.h2_error: Exception | None = None
        self._changed = trio.Event()

    # -- input

    async def pump(self) -> None:
        try:
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                if self.h2_error is None:
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError as exc:
                        self.h2_error = exc
                        events = []
                    for ev in events:
                        self._on_event(ev)
                    try:
                        await self.write(self.h2.data_to_send())  # SETTINGS / PING acks
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                self._notify()
        finally:
            self.closed.set()
            self._notify()

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            changed = ev.changed_settings.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE)
            if changed is not None:
                self.initial_window = changed.new_value
        elif isinstance(ev, h2.events.WindowUpdated):
            if ev.stream_id:
                self.stream_credit[ev.stream_id] += ev.delta or 0
            else:
                self.conn_credit += ev.delta or 0
        elif isinstance(ev, h2.events.RequestReceived):
            self.requests[ev.stream_id] = Request(ev.stream_id, dict(ev.headers or []))
        elif isinstance(ev, h2.events.DataReceived):
            self.requests[ev.stream_id].body += ev.data or b""
        elif isinstance(ev, h2.events.StreamEnded):
            self.complete.append(ev.stream_id or 0)
        elif isinstance(ev, h2.events.StreamReset):
            self.resets[ev.stream_id or 0] = int(ev.error_code or 0)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway.append(int(ev.error_code or 0))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def request(self) -> Request:
        """The next complete request (HEADERS + body with END_STREAM)."""
        await self.wait_for(lambda: bool(self.complete))
        return self.requests[self.complete.pop(0)]

    # -- output

    def window(self, sid: int) -> int:
        """Bytes of DATA the client allows on ``sid`` now (stream and connection)."""
        stream = self.initial_window + self.stream_credit[sid] - self.sent[sid]
        conn = DEFAULT_WINDOW + self.conn_credit - self.sent_conn
        return min(stream, conn)

    async def write(self, data: bytes, *, dribble: int = 0) -> None:
        """Write raw bytes; with ``dribble``, 1..dribble bytes per send, each read by the
        client before the next is sent."""
        if not data:
            return
        async with self.send_lock:
            if not dribble:
                await self.stream.send_all(data)
                return
            sizes = itertools.cycle(range(1, dribble + 1))
            pos = 0
            while pos < len(data):
                n = next(sizes)
                await self.stream.send_all(data[pos : pos + n])
                pos += n
                await trio.testing.wait_all_tasks_blocked()

    def account(self, sid: int, n: int) -> None:
        self.sent[sid] += n
        self.sent_conn += n

    async def send_data(
        self, sid: int, payload: bytes, *, pad: int | None = None, dribble: int = 0
    ) -> None:
        """One DATA frame, sent once the client's windows allow it."""
        n = flow_len(payload, pad)
        if self.window(sid) < n:
            self.blocked = True
            self._notify()
            await self.wait_for(lambda: self.window(sid) >= n)
            self.blocked = False
        self.account(sid, n)
        await self.write(data_frame(sid, payload, pad=pad), dribble=dribble)

    def headers_block(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        return self.h2.encoder.encode(headers)

    def response_headers(self, sid: int, *, cuts: Iterable[int] = ()) -> bytes:
        return header_frames(self.headers_block(RESPONSE_HEADERS), sid, end_stream=False, cuts=cuts)

    def trailers(
        self, sid: int, status: int = 0, message: bytes = b"", *, cuts: Iterable[int] = ()
    ) -> bytes:
        headers = [(b"grpc-status", str(status).encode())]
        if message:
            headers.append((b"grpc-message", message))
        return header_frames(self.headers_block(headers), sid, end_stream=True, cuts=cuts)


@asynccontextmanager
async def crafted_server(handler: Callable[[Peer], Awaitable[None]]) -> AsyncIterator[int]:
    """Listen on 127.0.0.1; run ``handler(peer)`` for each connection. Yields the port."""

    peers: list[Peer] = []

    async def serve_one(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        peers.append(peer)
        peer.h2.initiate_connection()
        await peer.write(peer.h2.data_to_send())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.pump)
            await handler(peer)
            await peer.closed.wait()  # leave closing to the client
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, serve_one, listeners)
        try:
            yield port
            # the client closes first: let the server read what it sent until then
            with trio.move_on_after(2):
                for peer in peers:
                    await peer.closed.wait()
        finally:
            nursery.cancel_scope.cancel()


async def collect(adapter: GrpcAdapter, req: TaskRequest = REQ) -> list[Chunk]:
    with trio.fail_after(10):
        return [c async for c in adapter.stream(req)]


async def stream_reply(
    peer: Peer,
    payloads: Iterable[bytes],
    *,
    pads: Iterable[int | None] = itertools.repeat(None),
    dribble: int = 0,
) -> Request:
    """Answer the next Stream call: HEADERS, one DATA frame per payload, OK trailers."""
    req = await peer.request()
    assert req.headers[b":path"] == method_path("Stream").encode()
    assert req.headers[b"content-type"] == b"application/grpc"
    assert codec.decode_task_request(bytes(req.body[5:])) == REQ
    await peer.write(peer.response_headers(req.sid), dribble=dribble)
    for payload, pad in zip(payloads, pads, strict=False):
        await peer.send_data(req.sid, payload, pad=pad, dribble=dribble)
    await peer.write(peer.trailers(req.sid), dribble=dribble)
    return req


def cut(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    for n in itertools.cycle(sizes):
        if pos >= len(data):
            return out
        out.append(data[pos : pos + n])
        pos += n
    raise AssertionError  # pragma: no cover - cycle never ends


# ------------------------------------------------------------------ message layouts


def one_per_frame(msgs: list[bytes]) -> list[bytes]:
    return msgs


def many_per_frame(msgs: list[bytes]) -> list[bytes]:
    return [b"".join(msgs[i : i + 7]) for i in range(0, len(msgs), 7)]


def split_everywhere(msgs: list[bytes]) -> list[bytes]:
    # cuts inside length prefixes, inside messages, across message boundaries
    return cut(b"".join(msgs), (1, 2, 3, 4, 5, 6, 7, 100, 4099, MAX_FRAME, 13))
