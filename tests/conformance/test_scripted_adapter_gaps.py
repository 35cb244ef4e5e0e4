"""The scripted adapter's behaviours for the router-gaps cases, over real loopback gRPC
with the router's own client (GrpcAdapter): options for the estimate, usage and
confidence, long and raw answers, a second listener with its own half of ``duo:A|B``,
and the task's meta and the calls in flight in its events."""

from __future__ import annotations

import pytest
import trio

from atp_proto.adapters import AdapterError, Chunk, TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter
from conformance.scripted_adapter import ScriptedAdapter, for_listener, split_options


def _req(behaviour: str, token: str = "t1", **meta: object) -> TaskRequest:
    return TaskRequest("qa", f"conformance:{token}:{behaviour}", meta=meta)


async def _collect(a: GrpcAdapter, req: TaskRequest) -> list[Chunk]:
    return [c async for c in a.stream(req)]


def test_options_and_duo_parsing() -> None:
    opts, rest = split_options("{est_conf=0.9,tok=40,bogus=1,usd=-5,n=x}slow:50")
    assert rest == "slow:50"
    assert (opts["est_conf"], opts["tok"], opts["usd"], opts["n"]) == (0.9, 40.0, 3.0, 4.0)
    assert split_options("ok") == (split_options("{}ok")[0], "ok")
    assert for_listener("duo:{conf=0.3}ok|stall", 0) == "{conf=0.3}ok"
    assert for_listener("duo:{conf=0.3}ok|stall", 1) == "stall"
    assert for_listener("duo:ok", 1) == "ok"  # one part: both listeners
    assert for_listener("slow:10", 1) == "slow:10"


async def test_estimate_usage_and_confidence_options() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0), GrpcAdapter("conf", "127.0.0.1", sa.port or 0) as a:
        est = await a.estimate(_req("{est_tok=500,est_usd=40,est_conf=0.25}ok"))
        chunks = await _collect(a, _req("{tok=40,usd=1000,n=3,conf=0.3}ok"))
    assert (est.out_tokens, est.usd_micros, est.confidence) == (500, 40, 0.25)
    assert [(c.tokens, c.usd_micros, c.confidence) for c in chunks] == [
        (44, 1000, 0.3),
        (84, 2000, 0.3),
        (124, 3000, 0.3),
    ]


async def test_big_and_raw_answers() -> None:
    sa = ScriptedAdapter()
    async with sa.serving("127.0.0.1", 0), GrpcAdapter("conf", "127.0.0.1", sa.port or 0) as a:
        big = await _collect(a, _req("big:40000"))
        good = await _collect(a, _req("raw:0a0178" + "20" + "ff" * 9 + "01" + "2801", "t2"))
        with pytest.raises(AdapterError) as bad:
            await _collect(a, _req("raw:0a0178" + "20" + "ff" * 9 + "3f" + "2801", "t3"))
    text = "".join(c.content for c in big)
    assert len(text) == 40000 and big[-1].final and len(big) == 3
    assert '"' in text and "\\" in text and "é" in text  # longer as JSON than as CBOR
    assert good[0].content == "x" and good[0].usd_micros == 2**64 - 1
    assert bad.value.code == "EAGENTDOWN"  # a varint past 2**64 - 1 (ATP-ADAPT-016)


async def test_two_listeners_share_events_and_split_a_duo() -> None:
    """The second listener plays the second half of ``duo:A|B``; the events name the
    listener, carry the task's meta, and count the token's calls in flight on both."""
    sa = ScriptedAdapter()
    got: dict[str, list[Chunk]] = {}
    async with (
        sa.serving("127.0.0.1", 0, "conf"),
        sa.serving("127.0.0.1", 0, "conf2"),
        GrpcAdapter("conf", "127.0.0.1", sa.ports["conf"]) as a,
        GrpcAdapter("conf2", "127.0.0.1", sa.ports["conf2"]) as b,
    ):
        assert sa.port == sa.ports["conf"] != sa.ports["conf2"]

        async def run(name: str, ad: GrpcAdapter) -> None:
            req = _req("duo:{conf=0.3}slow:50|{n=2,conf=0.9}slow:50", tools=["x"])
            got[name] = await _collect(ad, req)

        with trio.fail_after(10):
            async with trio.open_nursery() as calls:
                calls.start_soon(run, "conf", a)
                calls.start_soon(run, "conf2", b)
    assert [c.confidence for c in got["conf"]] == [0.3] * 4
    assert [c.confidence for c in got["conf2"]] == [0.9] * 2
    starts = [e for e in sa.events("t1") if e["event"] == "stream_start"]
    assert sorted(e["adapter"] for e in starts) == ["conf", "conf2"]
    assert all(e["meta"] == {"tools": ["x"]} for e in starts)
    assert max(e["inflight"] for e in starts) == 2  # both calls of the token at once
    assert sa.inflight["t1"] == 0
