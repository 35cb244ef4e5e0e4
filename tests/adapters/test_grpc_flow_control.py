"""Flow control of the trio client: credit goes back only as the consumer takes
messages, and leaving early resets the stream (crafted server: :mod:`h2_peer`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
import trio.testing
from h2_peer import (
    DEFAULT_WINDOW,
    REQ,
    Peer,
    chunk_msg,
    collect,
    crafted_server,
    make_chunks,
    stream_reply,
)

from atp_proto.adapters import Chunk
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.grpc._call import ACK_BATCH

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
