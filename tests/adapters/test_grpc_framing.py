"""gRPC message framing on the trio client: 5-byte length-prefixed messages laid out
in DATA frames every way a server may, and split across TCP reads (crafted server:
:mod:`h2_peer`)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from h2_peer import (
    DEFAULT_WINDOW,
    MAX_FRAME,
    Peer,
    chunk_msg,
    collect,
    crafted_server,
    cut,
    make_chunks,
    many_per_frame,
    one_per_frame,
    split_everywhere,
    stream_reply,
)

from atp_proto.adapters import Chunk
from atp_proto.adapters.grpc import GrpcAdapter, _h2

# ------------------------------------------------------------------ a. normal streams


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
