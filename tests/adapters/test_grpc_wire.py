"""The trio gRPC client against a hand-written HTTP/2 server, over real loopback TCP.

The server side is crafted in the test: ``h2`` (server mode) does the handshake, reads the
request and tracks the WINDOW_UPDATEs the client sends; every response frame is serialized
byte-exactly with ``hyperframe`` and written raw, so the server can send what a real
server would never send (padding, CONTINUATION, bytes dribbled across reads, frames that
break flow control or the frame size limit). The client's own frame parser
(``_h2_fastpath.feed`` and its fast path for DATA) must give the same result as ``h2``
in every case, fail cleanly on a protocol violation, and never grant the server more
credit than its consumer has used.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio
import trio.testing
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame

from atp_proto.adapters import AdapterError, Chunk, CostEstimate, TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter, _h2
from atp_proto.adapters.grpc._call import ACK_BATCH
from atp_proto.adapters.grpc.status import method_path
from atp_proto.adapters.proto import codec
from atp_proto.frames import ErrorCode

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


# ------------------------------------------------------------------ a. normal streams


def one_per_frame(msgs: list[bytes]) -> list[bytes]:
    return msgs


def many_per_frame(msgs: list[bytes]) -> list[bytes]:
    return [b"".join(msgs[i : i + 7]) for i in range(0, len(msgs), 7)]


def split_everywhere(msgs: list[bytes]) -> list[bytes]:
    # cuts inside length prefixes, inside messages, across message boundaries
    return cut(b"".join(msgs), (1, 2, 3, 4, 5, 6, 7, 100, 4099, MAX_FRAME, 13))


@pytest.mark.parametrize(
    ("layout", "chunks"),
    [
        (one_per_frame, make_chunks(200)),
        (many_per_frame, make_chunks(200)),
        (split_everywhere, make_chunks(60, big=(3, 4, 30))),  # 70 KB messages span frames
    ],
    ids=["one-per-frame", "many-per-frame", "split-across-frames"],
)
async def test_stream_layouts(
    layout: Callable[[list[bytes]], list[bytes]], chunks: list[Chunk]
) -> None:
    payloads = layout([chunk_msg(c) for c in chunks])
    assert all(len(p) <= MAX_FRAME for p in payloads)
    if layout is split_everywhere:
        assert sum(len(p) for p in payloads) > 2 * DEFAULT_WINDOW  # credit must come back

    async def handler(peer: Peer) -> None:
        await stream_reply(peer, payloads)

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        assert await collect(a) == chunks


async def test_stream_dribbled_a_few_bytes_per_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TCP read holds 1-7 bytes: frame headers, gRPC prefixes and messages are all
    split across reads, and the client must carry the partial frame over."""
    feeds: list[tuple[int, int]] = []  # (bytes given to feed, bytes it left pending)
    original = _h2.feed

    def spy(ch: _h2.H2Channel, data: bytes) -> bytes:
        rest = original(ch, data)
        feeds.append((len(data), len(rest)))
        return rest

    monkeypatch.setattr(_h2, "feed", spy)
    chunks = make_chunks(12)
    msgs = [chunk_msg(c) for c in chunks]
    payloads = [msgs[0], b"".join(msgs[1:4]), *cut(b"".join(msgs[4:]), (3, 50, 11))]

    async def handler(peer: Peer) -> None:
        await stream_reply(peer, payloads, dribble=7)

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        assert await collect(a) == chunks
    # the dribbling did split frames: headers (< 9 bytes pending) and bodies (>= 9)
    assert any(0 < rest < 9 for _, rest in feeds), feeds
    assert any(rest >= 9 for _, rest in feeds), feeds
    assert len(feeds) > 100


# ------------------------------------------------------------------ b. padding


async def test_padded_and_unpadded_data_interleaved() -> None:
    chunks = make_chunks(500, size=300)
    msgs = [chunk_msg(c) for c in chunks]
    # whole messages, several per frame, and messages split across padded frames
    payloads = msgs[:100] + many_per_frame(msgs[100:200]) + cut(b"".join(msgs[200:]), (3, 999, 7))
    pads = [None, 0, 7, None, 255, 1, None, 100]
    total = sum(flow_len(p, pad) for p, pad in zip(payloads, itertools.cycle(pads)))
    assert total > 2 * DEFAULT_WINDOW  # the padding's credit must come back too
    peers: list[Peer] = []

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        req = await stream_reply(peer, payloads, pads=itertools.cycle(pads))
        assert peer.sent[req.sid] == total

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        assert await collect(a) == chunks
    assert peers[0].h2_error is None and peers[0].goaway == [0]


# ------------------------------------------------------------------ c. CONTINUATION


async def test_headers_and_trailers_split_by_continuation() -> None:
    chunks = make_chunks(5)

    async def handler(peer: Peer) -> None:
        req = await peer.request()
        # response HEADERS + CONTINUATION, and DATA right behind them in the same send
        out = peer.response_headers(req.sid, cuts=(3,))
        for c in chunks[:3]:
            peer.account(req.sid, len(chunk_msg(c)))
            out += data_frame(req.sid, chunk_msg(c))
        await peer.write(out)
        await trio.testing.wait_all_tasks_blocked()
        # trailers: HEADERS(END_STREAM, no END_HEADERS) ends one read, its two
        # CONTINUATIONs come in the next: the client must remember it is inside a block
        trailers = peer.trailers(req.sid, cuts=(1, 2))
        first_len = 9 + int.from_bytes(trailers[:3], "big")
        for c in chunks[3:]:
            await peer.send_data(req.sid, chunk_msg(c))
        await peer.write(trailers[:first_len])
        await trio.testing.wait_all_tasks_blocked()
        await peer.write(trailers[first_len:])

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        assert await collect(a) == chunks


async def test_data_inside_a_header_block_is_a_protocol_error() -> None:
    """DATA between a HEADERS frame without END_HEADERS and its CONTINUATION is a
    connection error; a fast path that lost track of the open header block would take the
    DATA as a chunk and end the call OK."""
    chunks = make_chunks(3)
    peers: list[Peer] = []

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        req = await peer.request()
        out = peer.response_headers(req.sid)
        for c in chunks:
            peer.account(req.sid, len(chunk_msg(c)))
            out += data_frame(req.sid, chunk_msg(c))
        trailers = peer.trailers(req.sid, cuts=(1,))
        first_len = 9 + int.from_bytes(trailers[:3], "big")
        extra = chunk_msg(make_chunks(4)[3])
        peer.account(req.sid, len(extra))
        out += trailers[:first_len] + data_frame(req.sid, extra) + trailers[first_len:]
        await peer.write(out)

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        got: list[Chunk] = []
        with pytest.raises(AdapterError) as ei, trio.fail_after(10):
            async for c in a.stream(REQ):
                got.append(c)  # noqa: PERF401 - keep what came before the error
    assert got == chunks
    assert ei.value.code == ErrorCode.EAGENTDOWN
    assert "protocol error" in ei.value.message.lower()
    assert peers[0].goaway[0] == h2.errors.ErrorCodes.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("cut_last", "message"),
    [
        (False, "server sent no grpc-status (grpc status 2)"),
        (True, "stream ended inside a message (grpc status 13)"),
    ],
)
async def test_data_with_end_stream_and_no_trailers(cut_last: bool, message: str) -> None:
    """END_STREAM on a DATA frame (h2's path, not the fast path) ends the call; without
    trailers there is no grpc-status, so it fails."""
    chunks = make_chunks(3)

    async def handler(peer: Peer) -> None:
        req = await peer.request()
        out = peer.response_headers(req.sid)
        msgs = [chunk_msg(c) for c in chunks]
        if cut_last:
            msgs[-1] = msgs[-1][:-1]
        for i, msg in enumerate(msgs):
            peer.account(req.sid, len(msg))
            out += data_frame(req.sid, msg, end=i == len(msgs) - 1)
        await peer.write(out)

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        got: list[Chunk] = []
        with pytest.raises(AdapterError) as ei, trio.fail_after(10):
            async for c in a.stream(REQ):
                got.append(c)  # noqa: PERF401 - keep what came before the error
    assert got == (chunks[:2] if cut_last else chunks)
    assert ei.value.code == ErrorCode.EAGENTDOWN
    assert ei.value.message == message
    assert ei.value.streamed is True


async def test_error_status_in_a_continuation_frame() -> None:
    async def handler(peer: Peer) -> None:
        req = await peer.request()
        msg = chunk_msg(make_chunks(1)[0])
        peer.account(req.sid, len(msg))
        await peer.write(
            peer.response_headers(req.sid)
            + data_frame(req.sid, msg)
            + peer.trailers(req.sid, 8, b"slow down 100%25", cuts=(2, 5))
        )

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        got: list[Chunk] = []
        with pytest.raises(AdapterError) as ei, trio.fail_after(10):
            async for c in a.stream(REQ):
                got.append(c)  # noqa: PERF401 - keep what came before the error
    assert got == make_chunks(1)
    assert ei.value.code == ErrorCode.EWINDOW_AGENT  # RESOURCE_EXHAUSTED
    assert ei.value.message == "slow down 100% (grpc status 8)"
    assert ei.value.streamed is True


async def test_estimate_with_padding_split_reply_and_continuation() -> None:
    est = CostEstimate(11, 22, 33, 44.5, 5.0, 0.75)
    reply = grpc_msg(codec.encode_estimate(est))

    async def handler(peer: Peer) -> None:
        req = await peer.request()
        assert req.headers[b":path"] == method_path("Estimate").encode()
        out = peer.response_headers(req.sid, cuts=(1,))
        for i, part in enumerate(cut(reply, (2, 4, 1000))):
            pad = 9 if i % 2 else None
            peer.account(req.sid, flow_len(part, pad))
            out += data_frame(req.sid, part, pad=pad)
        await peer.write(out + peer.trailers(req.sid, cuts=(1,)))

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        with trio.fail_after(10):
            assert await a.estimate(REQ) == est


# ------------------------------------------------------------------ d-f. violations


@pytest.mark.parametrize("overshoot", [0, 1])
async def test_data_beyond_the_stream_window(overshoot: int) -> None:
    """The server fills the stream window exactly (fine) or by one byte more (a
    FLOW_CONTROL_ERROR: the connection is torn down and the call fails)."""
    first = make_chunks(1)[0]
    first_read = trio.Event()
    flood: list[Chunk] = []
    peers: list[Peer] = []

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        req = await peer.request()
        await peer.write(peer.response_headers(req.sid))
        await peer.send_data(req.sid, chunk_msg(first))
        await first_read.wait()
        # the consumer holds its credit (h2 returns it only at half a window), so the
        # window is what is left of the initial one
        assert peer.stream_credit[req.sid] == 0
        room = peer.window(req.sid) + overshoot
        assert room == DEFAULT_WINDOW - len(chunk_msg(first)) + overshoot
        frames = -(-room // MAX_FRAME)
        sizes = [room // frames + (1 if i < room % frames else 0) for i in range(frames)]
        out = b""
        for i, size in enumerate(sizes):
            chunk, msg = sized_chunk_msg(size, i)
            flood.append(chunk)
            out += data_frame(req.sid, msg)
        peer.account(req.sid, room)
        await peer.write(out + peer.trailers(req.sid))

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        got: list[Chunk] = []
        with trio.fail_after(10):
            stream = a.stream(REQ)
            got.append(await stream.__anext__())
            first_read.set()
            if overshoot:
                # do not consume (no credit goes back) until the client gave up
                with trio.move_on_after(5):
                    await peers[0].closed.wait()
            try:
                async for c in stream:
                    got.append(c)  # noqa: PERF401 - keep what came before the error
            except AdapterError as exc:
                error: AdapterError | None = exc
            else:
                error = None
    assert got[0] == first
    if not overshoot:
        assert error is None
        assert got == [first, *flood]
        return
    assert error is not None, "the flow-control violation went unnoticed"
    assert error.code == ErrorCode.EAGENTDOWN
    assert error.message == (
        "HTTP/2 protocol error: Flow control window shrunk below 0 (grpc status 14)"
    )
    assert error.streamed is True
    # every frame within the window was delivered, the one crossing it was not
    assert got == [first, *flood[:-1]]
    assert peers[0].goaway[0] == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR


async def test_data_before_response_headers() -> None:
    peers: list[Peer] = []

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        req = await peer.request()
        msg = chunk_msg(make_chunks(1)[0])
        peer.account(req.sid, len(msg))
        # a client that let this through would end the call OK with no chunk
        await peer.write(
            data_frame(req.sid, msg) + peer.response_headers(req.sid) + peer.trailers(req.sid)
        )

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        with pytest.raises(AdapterError) as ei:
            await collect(a)
    assert ei.value.code == ErrorCode.EAGENTDOWN
    assert ei.value.message == (
        "HTTP/2 protocol error: cannot receive data before headers (grpc status 14)"
    )
    assert ei.value.streamed is False
    assert peers[0].goaway[0] == h2.errors.ErrorCodes.PROTOCOL_ERROR


@pytest.mark.parametrize("after_chunks", [0, 3])
async def test_frame_larger_than_max_frame_size(after_chunks: int) -> None:
    chunks = make_chunks(after_chunks)
    peers: list[Peer] = []
    consumed = trio.Event()

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        req = await peer.request()
        await peer.write(peer.response_headers(req.sid))
        for c in chunks:
            await peer.send_data(req.sid, chunk_msg(c))
        if chunks:
            await consumed.wait()
            await trio.testing.wait_all_tasks_blocked()  # the client's acks are out
        _, big = sized_chunk_msg(MAX_FRAME + 1, 99)
        peer.account(req.sid, len(big))
        await peer.write(data_frame(req.sid, big) + peer.trailers(req.sid))

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        got: list[Chunk] = []
        with pytest.raises(AdapterError) as ei, trio.fail_after(10):
            async for c in a.stream(REQ):
                got.append(c)
                if len(got) == len(chunks):
                    consumed.set()
    assert got == chunks
    assert ei.value.code == ErrorCode.EAGENTDOWN
    assert ei.value.message == (
        "HTTP/2 protocol error: Received overlong frame: length 16385, max 16384 (grpc status 14)"
    )
    assert ei.value.streamed is bool(after_chunks)
    assert peers[0].goaway[0] == h2.errors.ErrorCodes.FRAME_SIZE_ERROR


async def test_oversized_frame_fails_on_its_header() -> None:
    async def handler(peer: Peer) -> None:
        req = await peer.request()
        await peer.write(peer.response_headers(req.sid))
        header = (MAX_FRAME + 1).to_bytes(3, "big") + b"\x00\x00" + req.sid.to_bytes(4, "big")
        await peer.write(header + b"\x00" * 100)  # the rest never comes

    error: AdapterError | None = None
    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        with trio.move_on_after(2):
            try:
                await collect(a)
            except AdapterError as exc:
                error = exc
    assert error is not None, "the call was still waiting 2 s after the frame header"
    assert error.code == ErrorCode.EAGENTDOWN
    assert "overlong frame" in error.message


@pytest.mark.parametrize("split", [True, False], ids=["split", "whole"])
async def test_message_above_max_message_size(split: bool) -> None:
    _, msg = sized_chunk_msg(300, 1)

    async def handler(peer: Peer) -> None:
        req = await peer.request()
        await peer.write(peer.response_headers(req.sid))
        for part in [msg[:100], msg[100:]] if split else [msg]:
            await peer.send_data(req.sid, part)
        await peer.write(peer.trailers(req.sid))

    async with (
        crafted_server(handler) as port,
        GrpcAdapter("t", "127.0.0.1", port, max_message_size=100) as a,
    ):
        error: AdapterError | None = None
        got: list[Chunk] = []
        try:
            got = await collect(a)
        except AdapterError as exc:
            error = exc
    assert error is not None, f"a 295-byte message passed max_message_size=100: {got}"
    assert error.code == ErrorCode.EWINDOW_AGENT  # RESOURCE_EXHAUSTED
    assert error.message == "message of 295 bytes is too large (grpc status 8)"


# ------------------------------------------------------------------ g-h. flow control


async def test_slow_consumer_stops_the_server_at_one_window() -> None:
    chunks = make_chunks(300, size=1000)
    msgs = [chunk_msg(c) for c in chunks]
    biggest = max(len(m) for m in msgs)
    peers: list[Peer] = []
    done = trio.Event()

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        await stream_reply(peer, msgs)
        done.set()

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        got: list[Chunk] = []
        consumed = 0  # flow-controlled bytes of the messages taken by the consumer
        pauses = 0
        with trio.fail_after(10):
            async for c in a.stream(REQ):
                consumed += len(msgs[len(got)])
                got.append(c)
                peer = peers[0]
                # the client never grants credit for data its consumer has not taken
                assert peer.stream_credit[1] <= consumed, (len(got), peer.stream_credit[1])
                if len(got) in (10, 150):  # the consumer stops reading for a while
                    pauses += 1
                    await trio.testing.wait_all_tasks_blocked(0.05)  # credit in flight lands
                    credit = peer.stream_credit[1]
                    assert peer.blocked
                    await trio.sleep(0.3)
                    assert peer.blocked
                    assert peer.stream_credit[1] == credit  # no credit while not reading
                    # the server stopped because the window is used up, not earlier
                    assert 0 <= peer.window(1) < biggest
                    assert peer.sent[1] - consumed <= DEFAULT_WINDOW  # sent, not consumed
                    # credit held back (batching) is bounded: the stream cannot stall
                    assert consumed - credit < DEFAULT_WINDOW // 2 + ACK_BATCH
            await done.wait()
    assert pauses == 2
    assert got == chunks
    assert peers[0].sent[1] == sum(len(m) for m in msgs)


async def test_credit_comes_back_over_a_long_stream() -> None:
    chunks = make_chunks(1024, size=1000)
    msgs = [chunk_msg(c) for c in chunks]
    total = sum(len(m) for m in msgs)
    assert total > 1 << 20
    peers: list[Peer] = []

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        await stream_reply(peer, msgs)

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        assert await collect(a) == chunks
        # the credit the server needed came back in WINDOW_UPDATEs, batched
        peer = peers[0]
        assert peer.stream_credit[1] >= total - DEFAULT_WINDOW
        assert peer.stream_credit[1] <= total


async def test_leaving_early_resets_the_stream() -> None:
    chunks = make_chunks(40, size=1000)
    peers: list[Peer] = []
    all_sent = trio.Event()

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        req = await peer.request()
        await peer.write(peer.response_headers(req.sid))
        for c in chunks:
            await peer.send_data(req.sid, chunk_msg(c))
        all_sent.set()  # no trailers: the client leaves first
        # the connection is still good for the next call
        await stream_reply(peer, [chunk_msg(c) for c in chunks[:3]])

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        got = []
        with trio.fail_after(10):
            stream = cast(AsyncGenerator[Chunk, None], a.stream(REQ))
            async with aclosing(stream):
                async for c in stream:
                    got.append(c)
                    if len(got) == 2:
                        await all_sent.wait()
                        break
            peer = peers[0]
            await peer.wait_for(lambda: 1 in peer.resets)
            assert await collect(a) == chunks[:3]
        assert got == chunks[:2]
        assert peer.resets == {1: h2.errors.ErrorCodes.CANCEL}
        assert a.connects == 1
