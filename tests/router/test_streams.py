"""The router end to end on loopback: streams, encodings, windows, errors (ATP-WS, ATP-FLOW,
ATP-BUDGET, ATP-ERR, ATP-STREAM). Real sockets, real router, in-process adapters."""

from __future__ import annotations

import json
import tracemalloc

import cbor2
import pytest
import trio
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_proto.client import Final, Partial, StreamError
from atp_proto.frames import (
    BudgetWindow,
    Connection,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    Limits,
    MessageReceived,
    Role,
    StreamReset,
    decode_frames,
    encode_frame,
)
from conformance.vectors import seed_frames

from .conftest import ws_url

#: the seed's SYN (conformance/vectors/seed.json), parsed
SEED_SYN = json.loads(seed_frames()["syn"])


async def _text_exchange(ws: trio_websocket.WebSocketConnection, frame: dict) -> list[dict]:
    await ws.send_message(json.dumps(frame))
    replies = []
    while True:
        reply = json.loads(await ws.get_message())
        replies.append(reply)
        if "FIN" in reply.get("flags", []) or reply.get("type") == "ERROR":
            return replies


async def test_seed_syn_as_json_text(start_router) -> None:
    """ATP-WS-002, ATP-WS-003, ATP-WS-004, ATP-JSON-007, ATP-SEQ-003: the seed's SYN, sent as a browser would, gets PARTIALs then a FINAL
    in the text mapping, echoing the client's session and stream ids."""
    router = await start_router(adapters={"persona": "builtin:persona?latency_ms=1"})
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        replies = await _text_exchange(ws, SEED_SYN)
    partials, final = replies[:-1], replies[-1]
    assert len(partials) == 4
    for i, p in enumerate(partials):
        assert p["flags"] == ["MORE"]
        assert p["session_id"] == "s1" and p["stream_id"] == "st1"
        assert p["msg_seq"] == 2 + i  # router's first message is SYN.msg_seq + 1
        assert p["payload"]["type"] == "agent.result.partial"
        assert p["payload"]["content"]["adapter"] == "persona"
    assert final["flags"] == ["FIN"]
    assert final["msg_seq"] == 6
    assert final["payload"]["type"] == "agent.result.final"
    assert "the answer is" in final["payload"]["content"]["answer"]
    tel = final["telemetry"]
    assert tel["tokens"] > 0 and tel["usd_micros"] > 0 and tel["adapters"] == ["persona"]
    assert isinstance(tel["latency_ms"], int)


async def test_alias_reuse_after_final(start_router) -> None:
    """ATP-JSON-003: a browser may reuse "st1" for the next task once the stream finished."""
    router = await start_router()
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        first = await _text_exchange(ws, SEED_SYN)
        second = await _text_exchange(ws, SEED_SYN)
    assert first[-1]["flags"] == ["FIN"] and second[-1]["flags"] == ["FIN"]
    assert second[-1]["stream_id"] == "st1"


async def test_binary_client_many_concurrent_streams(start_router, connect_to) -> None:
    """ATP-WS-001, ATP-WS-005: Many streams at once on one session, each answered with its own content."""
    router = await start_router(adapters={"echo": "builtin:echo?chunks=3"})
    results: dict[int, Final] = {}
    async with connect_to(router) as client:

        async def one(i: int) -> None:
            results[i] = await client.ask(f"prompt number {i:03d}", qos="gold")

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, i)
    assert len(results) == 60
    for i, final in results.items():
        assert final.content["answer"] == f"prompt number {i:03d}"
        assert final.telemetry["adapters"] == ["echo"]


async def test_fanout_and_consensus(start_router, connect_to) -> None:
    """ATP-BUDGET-004: meta.fanout asks several adapters; PARTIALs come from each; FINAL names them all."""
    router = await start_router()
    seen: set[str] = set()
    async with connect_to(router) as client:
        async with client.stream("hello", meta={"fanout": 2}) as st:
            async for item in st:
                if isinstance(item, Partial):
                    seen.add(item.content["adapter"])
                else:
                    final = item
    assert seen == {"echo", "persona"}
    assert sorted(final.telemetry["adapters"]) == ["echo", "persona"]
    # echo parrots the prompt and claims confidence 0.1 < persona 0.62: the answer wins
    assert final.content["adapter"] == "persona"


async def test_escalation_on_low_confidence(start_router, connect_to) -> None:
    """ATP-ADAPT-005: Cheap-first, then champion/challenger: below min_confidence the router escalates."""
    router = await start_router(
        adapters={
            "cheap": "builtin:persona?confidence=0.3&usd_per_1k=100",
            "strong": "builtin:persona?confidence=0.95&usd_per_1k=9000",
        }
    )
    escalations = []
    async with connect_to(router) as client:
        async with client.stream("hello", meta={"min_confidence": 0.8}) as st:
            async for item in st:
                if isinstance(item, Partial) and "escalate" in item.content:
                    escalations.append(item.content["escalate"])
                elif isinstance(item, Final):
                    final = item
    assert escalations == [{"from": "cheap", "to": "strong", "confidence": 0.3}]
    assert final.content["adapter"] == "strong"
    assert final.telemetry["adapters"] == ["cheap", "strong"]


async def test_budget_refused_at_admission(start_router, connect_to) -> None:
    """ATP-BUDGET-002: a window smaller than the guard-banded estimate is refused with EBUDGET."""
    router = await start_router()
    async with connect_to(router) as client:
        with pytest.raises(StreamError) as err:
            await client.ask("hello", window=BudgetWindow(max_tokens=2))
    assert err.value.code == "EBUDGET"
    assert "budget window" in err.value.message


async def test_window_update_lowers_budget_mid_flight(start_router, connect_to) -> None:
    """ATP-BUDGET-005: WINDOW_UPDATE lowering max_tokens below usage ends the stream, EBUDGET."""
    router = await start_router(adapters={"slow": "builtin:persona?latency_ms=50&chunks=20"})
    async with connect_to(router) as client:
        with pytest.raises(StreamError) as err:
            async with client.stream("hello", window=BudgetWindow(max_tokens=10_000)) as st:
                async for item in st:
                    assert isinstance(item, Partial)
                    client._conn.update_window(st.stream_id, BudgetWindow(max_tokens=1))
                    await client._flush()
    assert err.value.code == "EBUDGET"


async def test_task_type_not_allowed_is_esec(start_router, jwt_env, connect_to) -> None:
    """ATP-SEC-004: claims restrict task types; others are refused per stream with ESEC."""
    from atp_proto.router import issue_token

    router = await start_router(auth=True)
    token = issue_token(jwt_env.encode(), task_types=["qa"])
    async with connect_to(router, token=token) as client:
        ok = await client.ask("hello", task_type="qa")
        with pytest.raises(StreamError) as err:
            await client.ask("hello", task_type="code_review")
        # the session survives the refusal
        again = await client.ask("hello again", task_type="qa")
    assert ok.content["ok"] and again.content["ok"]
    assert err.value.code == "ESEC"


async def test_bad_payload_is_stream_error_session_survives(start_router) -> None:
    """ATP-ERR-001, ATP-ERR-005: a SYN without a prompt is EPROTO on that stream; the session goes on."""
    router = await start_router()
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        bad = dict(SEED_SYN, payload={"type": "x", "content": {"no_prompt": 1}})
        replies = await _text_exchange(ws, bad)
        assert replies[-1]["type"] == "ERROR"
        assert replies[-1]["error"]["code"] == "EPROTO"
        assert "prompt" in replies[-1]["error"]["message"]
        good = await _text_exchange(ws, SEED_SYN)
        assert good[-1]["flags"] == ["FIN"]


async def test_wrong_sequence_number(start_router) -> None:
    """ATP-SEQ-004: a wrong msg_seq resets the stream with ESEQ_RETRY; the session survives."""
    router = await start_router(adapters={"slow": "builtin:persona?latency_ms=100"})
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(json.dumps(SEED_SYN))
        await ws.send_message(json.dumps({"stream_id": "st1", "msg_seq": 9, "payload": {}}))
        while True:
            reply = json.loads(await ws.get_message())
            if reply.get("type") == "ERROR":
                break
        assert reply["error"]["code"] == "ESEQ_RETRY"
        assert reply["stream_id"] == "st1"
        assert (await _text_exchange(ws, SEED_SYN))[-1]["flags"] == ["FIN"]


async def _raw_binary(router, frames: bytes) -> tuple[list[Frame], int | None]:
    """Send raw bytes as one binary message; collect frames until the router closes."""
    got: list[Frame] = []
    code = None
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(frames)
        try:
            with trio.move_on_after(3):
                while True:
                    msg = await ws.get_message()
                    got.extend(decode_frames(msg))
        except trio_websocket.ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else None
    return got, code


async def test_bad_version_closes_with_1002(start_router) -> None:
    """ATP-FRAME-003, ATP-ERR-002: an unknown version breaks framing: ERROR on stream 0, close 1002."""
    router = await start_router()
    frame = bytearray(encode_frame(Frame.data(1, 1, {"content": {"prompt": "x"}}, flags=Flags.SYN)))
    frame[0] = 9
    got, code = await _raw_binary(router, bytes(frame))
    assert code == 1002
    assert got and got[-1].type == FrameType.ERROR and got[-1].stream_id == 0
    assert got[-1].error_code == "EPROTO"


async def test_truncated_frame_closes_with_1002(start_router) -> None:
    """ATP-WS-001: a binary message that ends inside a frame is a connection error."""
    router = await start_router()
    data = encode_frame(Frame.data(1, 1, {"content": {"prompt": "x"}}, flags=Flags.SYN))
    got, code = await _raw_binary(router, data[:-3])
    assert code == 1002
    assert got[-1].error_code == "EPROTO"


async def test_oversized_frame_resets_stream_only(start_router) -> None:
    """ATP-LIMIT-001: a frame over max_frame_size is ETOOBIG for its stream; the session lives."""
    router = await start_router(limits=Limits(max_frame_size=4096))
    big = encode_frame(Frame.data(1, 1, raw=b"x" * 5000, flags=Flags.SYN))
    good = encode_frame(Frame.data(3, 1, {"content": {"prompt": "after"}}, flags=Flags.SYN))
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(big + good)
        frames: list[Frame] = []
        while not any(f.has(Flags.FIN) for f in frames):
            frames.extend(decode_frames(await ws.get_message()))
    errors = [f for f in frames if f.type == FrameType.ERROR]
    assert [(e.stream_id, e.error_code) for e in errors] == [(1, "ETOOBIG")]
    fin = next(f for f in frames if f.has(Flags.FIN))
    assert fin.stream_id == 3
    assert fin.payload_obj()["content"]["answer"] == "after"


async def test_bad_json_text_closes_connection(start_router) -> None:
    """ATP-JSON-006: a text message that is not a JSON object cannot be attributed to a stream."""
    router = await start_router()
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message("{not json")
        reply = json.loads(await ws.get_message())
        assert reply["type"] == "ERROR" and reply["error"]["code"] == "EPROTO"
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1002


async def test_ttl_expiry_is_etimeout(start_router, connect_to) -> None:
    """ATP-TIME-001: when a stream's ttl passes the router ends it with ETIMEOUT."""
    router = await start_router(adapters={"slow": "builtin:persona?latency_ms=700&chunks=4"})
    async with connect_to(router) as client:
        with pytest.raises(StreamError) as err:
            await client.ask("hello", ttl=1)
        assert err.value.code == "ETIMEOUT"
        assert router.adapters["slow"].chunks_out < 4  # the adapter call was cancelled


async def test_client_cancel_cancels_adapter(start_router, connect_to) -> None:
    """ATP-FLAG-003: A client RST cancels the stream's task and its adapter call."""
    router = await start_router(adapters={"slow": "builtin:persona?latency_ms=100&chunks=50"})
    adapter = router.adapters["slow"]
    async with connect_to(router) as client:
        async with client.stream("hello") as st:
            async for _ in st:
                break  # leaving the block sends RST
        await trio.sleep(0.5)
        pulled = adapter.chunks_out
        await trio.sleep(0.5)
        assert adapter.chunks_out == pulled < 50
        assert (await client.ask("still here")).content["ok"]


async def test_slow_reader_bounds_memory_and_stops_adapter(start_router) -> None:
    """ATP-FLOW-006, ATP-LIMIT-002: a client that grants 4 KiB of credit and then stops reading makes the
    router stop pulling from its adapter; router-side memory for the stream stays bounded."""
    router = await start_router(adapters={"firehose": "builtin:echo?chunks=50000"})
    adapter = router.adapters["firehose"]
    conn = Connection(Role.CLIENT, limits=Limits(initial_window=4096), now=0.0)
    conn.send_capabilities()
    # 200 kB prompt: the SYN fits the router's 256 KiB initial window; echo answers it
    # in 50,000 chunks of 4 characters.
    sid = conn.open_stream(cbor2.dumps({"content": {"prompt": "x" * 200_000}}), now=None)
    tracemalloc.start()
    try:
        async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
            for m in conn.data_to_send():
                await ws.send_message(m)
            await trio.sleep(1.0)  # never read, never grant credit
            before = tracemalloc.get_traced_memory()[0]
            pulled = adapter.chunks_out
            await trio.sleep(1.0)
            after = tracemalloc.get_traced_memory()[0]
            session = next(iter(router.sessions.values()))
            buffered = session.conn.outbound_buffered(sid) + session.conn.queued_bytes
            # Now read what arrived (coalesced: few messages) and grant credit: it resumes.
            events = conn.receive_message(await ws.get_message(), trio.current_time())
            with trio.move_on_after(0.2):
                while True:
                    events += conn.receive_message(await ws.get_message(), trio.current_time())
            assert any(isinstance(e, MessageReceived) for e in events)
            for e in events:
                if isinstance(e, MessageReceived):
                    conn.acknowledge(sid, e.size)
            conn.acknowledge(sid, 4096)
            for m in conn.data_to_send():
                await ws.send_message(m)
            await trio.sleep(0.3)
            resumed = adapter.chunks_out
    finally:
        tracemalloc.stop()
    assert pulled < 50, f"adapter ran ahead of a stalled client: {pulled} chunks"
    assert adapter.chunks_out - pulled >= 0
    assert after - before < 256 * 1024, f"memory grew {after - before} B while stalled"
    assert buffered <= 64 * 1024
    assert resumed > pulled, "granting credit must resume the stream"


async def test_max_streams_refusal(start_router) -> None:
    """ATP-STREAM-008, ATP-ERR-004: a SYN beyond max_streams is refused with EWINDOW and retry_after_ms."""
    router = await start_router(
        adapters={"slow": "builtin:persona?latency_ms=300"}, limits=Limits(max_streams=2)
    )
    conn = Connection(Role.CLIENT, now=0.0)
    for _ in range(3):  # the client does not know the router's limit (no CAPABILITIES)
        conn.open_stream(cbor2.dumps({"content": {"prompt": "hi"}}), now=None)
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        for m in conn.data_to_send():
            await ws.send_message(m)
        resets: list[StreamReset] = []
        with trio.move_on_after(3):
            while not resets:
                resets += [
                    e
                    for e in conn.receive_message(await ws.get_message(), trio.current_time())
                    if isinstance(e, StreamReset)
                ]
    assert [(r.stream_id, r.code) for r in resets] == [(3, ErrorCode.EWINDOW)]
    assert resets[0].retry_after_ms is not None


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.text(max_size=40),
    st.text(max_size=300),
    st.floats(allow_nan=False),
)
def test_partial_chunk_body_is_the_cbor_of_the_dict(n: int, name: str, text: str, c: float) -> None:
    """The pre-encoded PARTIAL body is byte-identical to cbor2.dumps of the dict."""
    from atp_proto.messages import ADAPTER_KEY, CONFIDENCE_KEY, partial_chunk_body

    body = partial_chunk_body(
        n, ADAPTER_KEY + cbor2.dumps(name), text, CONFIDENCE_KEY + cbor2.dumps(c)
    )
    expected = {
        "type": "agent.result.partial",
        "content": {"chunk": n, "adapter": name, "text": text},
        "confidence": c,
    }
    assert body == cbor2.dumps(expected)
    assert cbor2.loads(body) == expected


async def test_window_update_raise_reaches_escalation(start_router, connect_to) -> None:
    """ATP-BUDGET-005, ATP-BUDGET-010, ATP-ADAPT-005: a WINDOW_UPDATE raising max_usd_micros
    mid-stream reaches escalation: the challenger that did not fit the SYN's window is
    called once the raised window lets it (one ledger, no stale snapshot)."""
    router = await start_router(
        adapters={
            # guard-banded silver estimates for "hello": cheap ~4, strong ~348 usd_micros
            "cheap": "builtin:persona?confidence=0.3&usd_per_1k=100&latency_ms=100",
            "strong": "builtin:persona?confidence=0.95&usd_per_1k=9000",
        }
    )
    escalations = []
    raised = False
    async with connect_to(router) as client:
        window = BudgetWindow(max_usd_micros=100)
        async with client.stream("hello", meta={"min_confidence": 0.8}, window=window) as st:
            async for item in st:
                if not raised:  # after the cheap adapter's first chunk
                    client._conn.update_window(st.stream_id, BudgetWindow(max_usd_micros=10_000))
                    await client._flush()
                    raised = True
                if isinstance(item, Partial) and "escalate" in item.content:
                    escalations.append(item.content["escalate"])
                elif isinstance(item, Final):
                    final = item
    assert escalations == [{"from": "cheap", "to": "strong", "confidence": 0.3}]
    assert final.content["adapter"] == "strong"
    assert final.telemetry["adapters"] == ["cheap", "strong"]


async def test_window_unraised_does_not_escalate_past_budget(start_router, connect_to) -> None:
    """ATP-BUDGET-002, ATP-ADAPT-005: the same stream without the raise stays within its
    window: no escalation to the challenger that does not fit (the control of the test
    above)."""
    router = await start_router(
        adapters={
            "cheap": "builtin:persona?confidence=0.3&usd_per_1k=100&latency_ms=10",
            "strong": "builtin:persona?confidence=0.95&usd_per_1k=9000",
        }
    )
    async with connect_to(router) as client:
        final = await client.ask(
            "hello", meta={"min_confidence": 0.8}, window=BudgetWindow(max_usd_micros=100)
        )
    assert final.content["adapter"] == "cheap"
    assert final.telemetry["adapters"] == ["cheap"]


async def test_window_update_lowering_stops_at_once(start_router, connect_to) -> None:
    """ATP-BUDGET-005: a WINDOW_UPDATE lowering max_tokens below what was already spent
    ends the stream with EBUDGET at once — not when the adapter's next chunk is charged
    (here a second away)."""
    router = await start_router(adapters={"slow": "builtin:persona?latency_ms=1000&chunks=4"})
    async with connect_to(router) as client:
        with pytest.raises(StreamError) as err:
            async with client.stream("hello", window=BudgetWindow(max_tokens=10_000)) as st:
                async for item in st:
                    assert isinstance(item, Partial)
                    lowered = trio.current_time()
                    client._conn.update_window(st.stream_id, BudgetWindow(max_tokens=1))
                    await client._flush()
        waited = trio.current_time() - lowered
    assert err.value.code == "EBUDGET"
    assert "budget window allows 1" in err.value.message
    assert waited < 0.5
    # the router's adapter call stopped too: no stream left running
    with trio.fail_after(2):
        while router.metrics.streams_active.get("silver"):
            await trio.sleep(0.01)


@pytest.mark.parametrize("n", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
@pytest.mark.parametrize("size", [0, 23, 24, 255, 256, 65535, 65536, 70_000])
def test_partial_chunk_body_heads_at_every_width(n: int, size: int) -> None:
    """Every CBOR head width (1, 2, 3, 5, 9 bytes) of the chunk number and of the text,
    ASCII and multi-byte UTF-8 (whose byte length is not its length in characters)."""
    from atp_proto.messages import ADAPTER_KEY, CONFIDENCE_KEY, partial_chunk_body

    for text in ("x" * size, "é" * (size // 2)):
        body = partial_chunk_body(
            n, ADAPTER_KEY + cbor2.dumps("a"), text, CONFIDENCE_KEY + cbor2.dumps(0.5)
        )
        expected = {
            "type": "agent.result.partial",
            "content": {"chunk": n, "adapter": "a", "text": text},
            "confidence": 0.5,
        }
        assert body == cbor2.dumps(expected)
