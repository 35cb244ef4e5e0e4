"""Protocol violations by the server, and how they reach the caller as AdapterError
(crafted server: :mod:`h2_peer`)."""

from __future__ import annotations

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
    MAX_FRAME,
    REQ,
    Peer,
    chunk_msg,
    collect,
    crafted_server,
    data_frame,
    header_frames,
    make_chunks,
    sized_chunk_msg,
)

from atp_proto.adapters import AdapterError, Chunk
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.frames import ErrorCode

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


@pytest.mark.parametrize(
    ("bad_block", "message"),
    [
        ([(b":status", b"abc"), (b"content-type", b"application/grpc")], "malformed :status"),
        ([(b":status", b"200"), (b"grpc-status", b"x1")], "malformed grpc-status"),
        # all digits, but more than int() converts (4300): it raised ValueError in the
        # reader, which is not a ProtocolError, and took the whole adapter down
        ([(b":status", b"2" * 4400)], "malformed :status"),
        ([(b":status", b"200"), (b"grpc-status", b"0" * 4400)], "malformed grpc-status"),
    ],
    ids=["status", "grpc-status", "status-4400-digits", "grpc-status-4400-digits"],
)
async def test_a_malformed_status_fails_that_call_only(
    bad_block: list[tuple[bytes, bytes]], message: str
) -> None:
    """A non-numeric ``:status`` or ``grpc-status`` (h2 does not check their values) fails
    the call it came on; the connection and the other call on it go on."""
    chunks = make_chunks(2)

    async def handler(peer: Peer) -> None:
        first = await peer.request()
        second = await peer.request()
        block = peer.headers_block(bad_block)
        await peer.write(header_frames(block, first.sid, end_stream=True))
        await peer.write(peer.response_headers(second.sid))
        for c in chunks:
            await peer.send_data(second.sid, chunk_msg(c))
        await peer.write(peer.trailers(second.sid))

    async with crafted_server(handler) as port, GrpcAdapter("t", "127.0.0.1", port) as a:
        failed: list[AdapterError] = []
        got: list[Chunk] = []

        async def bad() -> None:
            with pytest.raises(AdapterError) as ei:
                await collect(a)
            failed.append(ei.value)

        async def good() -> None:
            await trio.sleep(0.05)  # the second request
            got.extend(await collect(a))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(bad)
            nursery.start_soon(good)
    assert got == chunks
    assert len(failed) == 1 and message in failed[0].message, failed
