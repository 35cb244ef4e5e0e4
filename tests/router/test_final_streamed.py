"""A FINAL that does not repeat a streamed answer (spec §15.5): the router leaves the
answer out only when asked and when the winner's PARTIALs carry it; the client puts it
back. Real router on loopback, in-process adapters; the assembler on its own."""

from __future__ import annotations

import json

import cbor2
import pytest
import trio_websocket

from atp_proto.client import Final, Partial
from atp_proto.frames import ATPError
from atp_proto.messages import AnswerAssembler, final_body, final_body_streamed

from .conftest import ws_url


async def _text_stream(router, meta: dict) -> list[dict]:
    """One stream in the JSON text mapping; its frames, the last one ending it."""
    syn = {
        "stream_id": 1,
        "msg_seq": 1,
        "flags": ["SYN"],
        "meta": {"task_type": "qa", **meta},
        "payload": {"type": "agent.task", "content": {"prompt": "one two three four five"}},
    }
    out = []
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        await ws.send_message(json.dumps(syn))
        while True:
            frame = json.loads(await ws.get_message())
            out.append(frame)
            if "FIN" in frame.get("flags", []) or frame.get("type") == "ERROR":
                return out


async def test_streamed_final_on_the_wire(start_router) -> None:
    """[ATP-FINAL-002] [ATP-FINAL-003] Asked: no answer, streamed.chunks = the winner's
    text PARTIALs, whose texts are the answer a stream that did not ask gets."""
    router = await start_router(adapters={"echo": "builtin:echo?chunks=4"})
    full = await _text_stream(router, {})
    streamed = await _text_stream(router, {"final_answer": "streamed"})
    answer = full[-1]["payload"]["content"]
    assert "streamed" not in answer and answer["answer"] == "one two three four five"
    final = streamed[-1]["payload"]["content"]
    assert "answer" not in final
    texts = [f["payload"]["content"]["text"] for f in streamed[:-1]]
    assert final == {"ok": True, "adapter": "echo", "streamed": {"chunks": len(texts)}}
    assert len(texts) == 4 and "".join(texts) == answer["answer"]
    assert streamed[-1]["telemetry"]["adapters"] == ["echo"]


async def test_bad_value_refused(start_router) -> None:
    """[ATP-FINAL-001] anything but "full" / "streamed": EPROTO naming the key."""
    router = await start_router(adapters={"echo": "builtin:echo"})
    (err,) = await _text_stream(router, {"final_answer": "short"})
    assert err["type"] == "ERROR" and err["error"]["code"] == "EPROTO"
    assert "final_answer" in err["error"]["message"]


async def test_client_gets_the_same_final_under_fanout(start_router, connect_to) -> None:
    """[ATP-FINAL-004] Fan-out over two adapters: the SDK's FINAL (asked by default) is the
    one a full FINAL gives, built from the winner's PARTIALs only."""
    router = await start_router()
    async with connect_to(router) as client:
        full = await client.ask("hello there", meta={"fanout": 2}, streamed_final=False)
        partials: list[Partial] = []
        async with client.stream("hello there", meta={"fanout": 2}) as st:
            async for item in st:
                if isinstance(item, Final):
                    got = item
                else:
                    partials.append(item)
    assert {p.content.get("adapter") for p in partials} == {"echo", "persona"}
    assert got.content == full.content
    assert list(got.content) == ["ok", "answer", "adapter"]
    assert got.payload["content"] == got.content and got.confidence == full.confidence


def _final(body: bytes) -> Final:
    payload = cbor2.loads(body)
    return Final(payload["content"], payload["confidence"], {}, payload)


def test_assembler() -> None:
    """[ATP-FINAL-004] texts per adapter (notices skipped); a count that does not match,
    or a malformed ``streamed``, is EPROTO; a full FINAL passes unchanged."""
    a = AnswerAssembler()
    for content in (
        {"chunk": 0, "adapter": "x", "text": "ab"},
        {"chunk": 1, "adapter": "y", "text": "zz"},
        {"failover": {"from": "y", "to": "x"}},
        {"chunk": 3, "adapter": "x", "text": "c"},
    ):
        a.partial(content)
    done = a.final(_final(final_body_streamed("x", 2, 0.5)))
    assert done.content == {"ok": True, "answer": "abc", "adapter": "x"}
    assert done.payload["content"] == done.content
    full = _final(final_body("other", "x", 0.5))
    assert a.final(full) is full
    for body in (final_body_streamed("x", 3, 0.5), final_body_streamed("q", 1, 0.5)):
        with pytest.raises(ATPError) as exc:
            a.final(_final(body))
        assert exc.value.code == "EPROTO" and "PARTIALs" in exc.value.message
    bad = Final({"ok": True, "adapter": "x", "streamed": {"chunks": -1}}, None, {}, None)
    with pytest.raises(ATPError, match=r"streamed\.chunks"):
        a.final(bad)


def test_assembler_keeps_at_most_its_limit() -> None:
    """[ATP-FINAL-004] What a client keeps for a streamed FINAL is bounded (its
    max_message_size, which bounds a full FINAL too): an adapter whose texts went past it
    cannot complete a streamed FINAL (EPROTO saying to ask for "full"); the others can."""
    a = AnswerAssembler(limit=5)
    a.partial({"chunk": 0, "adapter": "x", "text": "abc"})
    a.partial({"chunk": 0, "adapter": "y", "text": "defg"})  # 3 + 4 > 5: not kept
    assert a.final(_final(final_body_streamed("x", 1, 0.5))).content["answer"] == "abc"
    with pytest.raises(ATPError) as exc:
        a.final(_final(final_body_streamed("y", 1, 0.5)))
    assert exc.value.code == "EPROTO" and 'final_answer "full"' in exc.value.message


async def test_a_stream_that_did_not_ask_keeps_no_texts(start_router, connect_to) -> None:
    """A stream that asked for the full FINAL (``streamed_final=False``, or ``meta``
    saying "full") keeps none of its PARTIALs' texts: its memory does not grow with a long
    answer; one that asked does."""
    router = await start_router(adapters={"echo": "builtin:echo?chunks=4"})
    async with connect_to(router) as client:
        for kwargs, keeps in (
            ({"streamed_final": False}, False),
            ({"meta": {"final_answer": "full"}}, False),
            ({}, True),
        ):
            async with client.stream("one two three", **kwargs) as st:
                assert (st._assembler is not None) is keeps, kwargs
                items = [item async for item in st]
            assert items[-1].content["answer"] == "one two three", kwargs
