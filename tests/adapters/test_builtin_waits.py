"""One family of builtin adapters, its waiting injected: the same class answers the same on
trio (``builtin:`` in the router) and on asyncio (served by ``atp adapter serve``)."""

from __future__ import annotations

import asyncio

import pytest
import trio

from atp_proto.adapters import Chunk, TaskRequest
from atp_proto.adapters.builtin import ASYNCIO, TRIO, behaviour_adapter, builtin_adapter
from atp_proto.adapters.sdk import BUILTIN_TARGETS

REQ = TaskRequest("t", "the same answer on both loops")


async def _collect_asyncio(kind: str, options: dict[str, str]) -> list[Chunk]:
    a = behaviour_adapter(kind, options, waits=ASYNCIO)
    return [c async for c in a.stream(REQ)]


def test_asyncio_and_trio_give_the_same_chunks() -> None:
    options = {"latency_ms": "1", "chunks": "3"}
    on_asyncio = asyncio.run(_collect_asyncio("persona", options))

    async def on_trio() -> list[Chunk]:
        a = builtin_adapter("persona", "builtin:persona?latency_ms=1&chunks=3")
        assert a.waits is TRIO
        return [c async for c in a.stream(REQ)]

    assert trio.run(on_trio) == on_asyncio and len(on_asyncio) == 3


def test_stall_waits_forever_on_asyncio() -> None:
    async def main() -> None:
        a = behaviour_adapter(
            "echo", {"chunks": "3", "fail": "stall", "fail_after": "1"}, waits=ASYNCIO
        )
        it = a.stream(REQ)
        await it.__anext__()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(it.__anext__(), 0.05)

    asyncio.run(main())


def test_served_builtins_wait_on_asyncio() -> None:
    adapter = BUILTIN_TARGETS["echo"].factory({})
    assert adapter.waits is ASYNCIO


def test_echo_repeat_answers_the_prompt_n_times() -> None:
    """``repeat`` (atp bench quic: a long answer from a short prompt): the chunks join to
    the prompt N times; a value out of range is refused in words."""

    async def main() -> str:
        a = builtin_adapter("echo", "builtin:echo?repeat=3&chunks=4")
        return "".join(c.content for c in [c async for c in a.stream(REQ)])

    assert trio.run(main) == REQ.prompt * 3
    with pytest.raises(ValueError, match="repeat must be within"):
        builtin_adapter("echo", "builtin:echo?repeat=0")


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ({"latency_ms": "abc"}, "bad adapter option latency_ms='abc': not a number"),
        ({"chunks": "1.5"}, "bad adapter option chunks='1.5': not an integer"),
    ],
)
def test_a_bad_option_value_is_named(query: dict[str, str], said: str) -> None:
    """The error names the option and its value (it said only "could not convert string
    to float: 'abc'")."""
    from atp_proto.adapters.builtin import BehaviourConfig

    with pytest.raises(ValueError) as info:
        BehaviourConfig.from_query(query)
    assert str(info.value) == said
