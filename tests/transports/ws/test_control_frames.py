"""The WebSocket transport (``atp_proto.transports.ws_server``, wsproto over trio) in a
real router on loopback sockets: ping / pong, fragmentation, the message size limit
(moved from tests/router/test_ws_layer.py, sections 1-3, and the empty-fragment
regression). Clients: the independent ``websockets`` package (sync, in a worker thread)
and the hand-built raw client (``_raw.py``).
"""

from __future__ import annotations

import itertools
import json
import tracemalloc

from websockets.exceptions import ConnectionClosed

from atp_proto.router import Router
from tests.router._helpers_e2e import (
    F_FIN,
    T_ERROR,
    RawFrame,
    parse_frames,
)
from tests.router._helpers_e2e import (
    syn_frame as _syn,
)

from ._raw import (
    MAX_MESSAGE,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    _answer,
    _no_sessions,
    _open_ws,
    _ws,
    close_payload,
    in_thread,
    ws_frame,
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


# ------------------------------------------------- regression from the review of ws.py


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
