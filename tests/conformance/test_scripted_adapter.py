"""The scripted adapter of the router role (conformance/scripted_adapter.py), over real
loopback gRPC: driven by the router's own client (GrpcAdapter, what a router under test
uses) and by grpcio (the official C-core stack, an independent client)."""

from __future__ import annotations

import itertools
import math

import pytest
import trio

from atp_proto.adapters import AdapterError, Chunk, TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.grpc.status import method_path
from atp_proto.adapters.proto import codec
from conformance.roles._grpc import open_conn
from conformance.roles.adapter import task_bytes
from conformance.scripted_adapter import ScriptedAdapter, behaviour_of


def _req(behaviour: str, token: str = "t1", deadline_ms: int | None = None) -> TaskRequest:
    return TaskRequest("qa", f"conformance:{token}:{behaviour}", deadline_ms=deadline_ms)


async def _collect(a: GrpcAdapter, req: TaskRequest) -> list[Chunk]:
    return [c async for c in a.stream(req)]


def test_behaviour_of_prompts() -> None:
    assert behaviour_of("conformance:abc:status:UNAVAILABLE") == ("abc", "status:UNAVAILABLE")
    assert behaviour_of("conformance:abc:") == ("abc", "ok")
    assert behaviour_of("hello") == ("", "ok")
    assert behaviour_of("conformance::stall") == ("", "ok")


async def test_ok_and_two_chunks_and_events() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0), GrpcAdapter("conf", "127.0.0.1", sa.port or 0) as a:
        chunks = await _collect(a, _req("ok"))
        assert [c.final for c in chunks] == [False, False, False, True]
        assert [c.tokens for c in chunks] == sorted(c.tokens for c in chunks)
        two = await _collect(a, _req("two_chunks", "t2"))
        assert [c.final for c in two] == [False, True]
        plain = await _collect(a, TaskRequest("qa", "not a conformance prompt"))
        assert plain[-1].final and len(plain) == 4
        est = await a.estimate(_req("ok", "t3"))
        assert 0 <= est.confidence <= 1
        assert (await a.health()).status == "READY"
    kinds = [e["event"] for e in sa.events("t1")]
    assert kinds == ["stream_start", *["chunk_sent"] * 4, "finished"]
    assert [e["event"] for e in sa.events("t3")] == ["estimate", "finished"]
    assert all(isinstance(e["at"], float) and e["deadline_ms"] is None for e in sa.events("t1"))
    assert sa.events("nobody") == []


async def test_text_answers_the_given_text_in_one_final_chunk() -> None:
    """``text:ANSWER`` (the router role's comparator cases, ATP-STRAT-003): colons kept."""
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0), GrpcAdapter("conf", "127.0.0.1", sa.port or 0) as a:
        chunks = await _collect(a, _req('text:Result: {"answer": 42}'))
        long = await _collect(a, _req("text:" + "x" * 5000, "t2"))
    assert [(c.content, c.final, c.confidence) for c in chunks] == [
        ('Result: {"answer": 42}', True, 0.8)
    ]
    assert len(long) == 1 and len(long[0].content) == 4096


async def test_slow_sleeps_before_each_chunk() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0), GrpcAdapter("conf", "127.0.0.1", sa.port or 0) as a:
        t0 = trio.current_time()
        chunks = await _collect(a, _req("slow:40"))
    assert len(chunks) == 4
    sent = [e["at"] for e in sa.events("t1") if e["event"] == "chunk_sent"]
    assert sent[0] - t0 >= 0.04 and all(b - a >= 0.035 for a, b in itertools.pairwise(sent))


async def test_die_mid_stream_resets_after_one_chunk() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0), GrpcAdapter("conf", "127.0.0.1", sa.port or 0) as a:
        got: list[Chunk] = []
        with pytest.raises(AdapterError) as err:
            async for c in a.stream(_req("die_mid_stream")):
                got.append(c)  # noqa: PERF401 - the chunks before the error count
    assert len(got) == 1 and not got[0].final
    assert err.value.code == "EAGENTDOWN" and err.value.streamed


async def test_stall_until_cancelled_is_seen_as_cancelled() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0), GrpcAdapter("conf", "127.0.0.1", sa.port or 0) as a:
        with trio.move_on_after(0.2) as cs:
            await _collect(a, _req("stall"))
        assert cs.cancelled_caught
        assert await sa.wait_event("t1", "cancelled", 2.0)
    kinds = [e["event"] for e in sa.events("t1")]
    assert kinds[0] == "stream_start" and "chunk_sent" not in kinds
    assert not await sa.wait_event("t1", "finished", 0.01)


async def test_stall_honours_the_grpc_deadline() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0):
        # the suite's recording client sends grpc-timeout without enforcing it itself, so
        # the end of the call is the adapter's doing
        async with open_conn("127.0.0.1", sa.port or 0, connect_timeout=5) as conn:
            call = await conn.call("Stream", task_bytes("conformance:t1:stall"), timeout=0.15)
            assert await call.wait_end(trio.current_time() + 3)
        assert call.status == 4 and not call.messages()  # DEADLINE_EXCEEDED, nothing sent
    ev = sa.events("t1")
    assert [e["event"] for e in ev] == ["stream_start", "deadline_exceeded", "finished"]
    assert ev[0]["deadline_ms"] == 150
    assert 0.14 <= ev[1]["at"] - ev[0]["at"] < 2.0  # at its deadline, not at our whim


@pytest.mark.parametrize(
    ("behaviour", "code", "retry"),
    [
        ("status:UNAVAILABLE", "EAGENTDOWN", 200),
        ("status:RESOURCE_EXHAUSTED:500", "EWINDOW_AGENT", 500),
        ("status:RESOURCE_EXHAUSTED:700:pushback", "EWINDOW_AGENT", 700),
        ("status:INVALID_ARGUMENT", "EPROTO", None),
        ("status:DEADLINE_EXCEEDED", "ETIMEOUT", None),
        ("status:PERMISSION_DENIED", "ESEC", None),
    ],
)
async def test_status_fails_the_stream_with_that_status(
    behaviour: str, code: str, retry: int | None
) -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0), GrpcAdapter("conf", "127.0.0.1", sa.port or 0) as a:
        with pytest.raises(AdapterError) as err:
            await _collect(a, _req(behaviour))
    assert err.value.code == code and not err.value.streamed
    assert err.value.retry_after_ms == retry
    assert [e["event"] for e in sa.events("t1")] == ["stream_start", "finished"]


def _grpcio_calls(port: int) -> tuple[list[bytes], object, object]:
    grpc = pytest.importorskip("grpc")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stream = ch.unary_stream(method_path("Stream"))
        ok = list(stream(codec.encode_task_request(_req("ok", "g1")), timeout=5))
        try:
            list(stream(codec.encode_task_request(_req("status:RESOURCE_EXHAUSTED:300", "g2"))))
        except grpc.RpcError as exc:
            failed = exc
        return ok, failed.code(), dict(failed.trailing_metadata())


async def test_an_independent_grpcio_client_reads_it() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0):
        ok, code, trailers = await trio.to_thread.run_sync(_grpcio_calls, sa.port or 0)
    chunks = [codec.decode_chunk(m) for m in ok]
    assert [c.final for c in chunks] == [False, False, False, True]
    assert str(code) == "StatusCode.RESOURCE_EXHAUSTED"
    details = trailers["grpc-status-details-bin"]
    assert codec.decode_retry_info(details) == 300
    assert not math.isnan(chunks[0].confidence)
