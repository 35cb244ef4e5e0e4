"""The DATA fast path (``adapters/grpc/_h2_fastpath.py``) beside h2's own path: padded
DATA, CONTINUATION, END_STREAM on DATA and header blocks must give the same result as h2
would (crafted server: :mod:`h2_peer`)."""

from __future__ import annotations

import itertools

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio
import trio.testing
from h2_peer import (
    DEFAULT_WINDOW,
    REQ,
    Peer,
    chunk_msg,
    collect,
    crafted_server,
    cut,
    data_frame,
    flow_len,
    grpc_msg,
    make_chunks,
    many_per_frame,
    stream_reply,
)

from atp_proto.adapters import AdapterError, Chunk, CostEstimate
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.grpc.status import method_path
from atp_proto.adapters.proto import codec
from atp_proto.frames import ErrorCode

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
