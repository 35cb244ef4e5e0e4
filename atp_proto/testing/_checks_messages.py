"""The transport checker's checks for message transports only (see
:mod:`.transport_checker`): their ``send`` can block part-way, so a cancelled send must
lose nothing and tear no framing; their units have a receive limit (ATP-WS-012)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from atp_proto.frames import ErrorCode
from atp_proto.transports.base import Oversized, TransportClosed

from ._checker_base import PairMaker, pattern

__all__ = [
    "check_cancelled_send_keeps_framing",
    "check_cancelled_twice_then_close",
    "check_cancelled_waiters_keep_call_order",
    "check_send_cancelled_while_waiting_for_its_turn",
    "check_unit_size_limit",
]


async def _blocked_then_cancelled(ws: Any, message: bytes) -> None:
    """Start ``ws.send(message)``, let it block on the full socket, cancel it."""
    scope = trio.CancelScope()
    result: list[bool] = []

    async def sender() -> None:
        with scope:
            await ws.send(message)
        result.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
    assert result == [True], "the send should have blocked on the full socket"


async def check_cancelled_send_keeps_framing(make: PairMaker, then: str) -> None:
    """A large send blocked by a peer that does not read, then cancelled, leaves part of
    its frame unsent; the next send (or flush) sends that remainder first, so the peer
    parses the cancelled message complete and then the next one — no torn framing."""
    pair = await make()
    ws, peer = pair.transport, pair.peer
    big = pattern(1, 2 << 20)
    after = pattern(2, 70_000)
    await _blocked_then_cancelled(ws, big)
    assert not ws.closed
    # the cancellation really cut the message: what reached the peer is a part of it
    # (the socket buffers hold a few KiB), so the next bytes must be its remainder
    assert peer.bytes_read == 0
    await peer.read_for(0.1)
    assert peer.messages == [] and 0 < peer.bytes_read < len(big)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, 2)
        if then == "flush":
            await ws.flush()  # only the remainder: the peer gets the first message whole
            with trio.fail_after(5):
                while len(peer.messages) < 1:
                    await trio.sleep(0.01)
            assert peer.messages == [big]
            await ws.send(after)
        else:
            await ws.send(after)
            await ws.flush()
    assert len(peer.messages) == 2
    assert peer.messages[0] == big  # complete: byte-identical
    assert peer.messages[1] == after
    assert peer.closes == []


async def check_cancelled_twice_then_close(make: PairMaker) -> None:
    """Two sends cancelled in a row (the second is cancelled while still sending the
    first's remainder): both messages reach the peer whole, then a close frame with the
    code the binding gives the ErrorCode (WebSocket: 4001 for ESEQ_RETRY); after it, send
    raises TransportClosed."""
    pair = await make()
    ws, peer = pair.transport, pair.peer
    m1, m2 = pattern(1, 1 << 20), pattern(2, 1 << 20)
    await _blocked_then_cancelled(ws, m1)
    await _blocked_then_cancelled(ws, m2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until_close_and_answer)
        with trio.fail_after(5):
            await ws.close_with_error(ErrorCode.ESEQ_RETRY, "bye")
    assert peer.messages == [m1, m2]
    assert peer.closes == [pair.close_code(ErrorCode.ESEQ_RETRY)]  # WebSocket: 4001
    try:
        await ws.send(b"late")
    except TransportClosed:
        pass
    else:
        raise AssertionError("a send after the close did not raise TransportClosed")


async def check_send_cancelled_while_waiting_for_its_turn(make: PairMaker) -> None:
    """A send cancelled while it waits behind another sender is not lost and not torn:
    its message goes out whole right after the sender ahead (with the next send, or
    flush), then the later send (the Transport contract: a cancelled call leaves the
    connection usable; the session relies on it not to lose ATP frames it already took
    from its Connection)."""
    pair = await make()
    ws, peer = pair.transport, pair.peer
    first, waited, last = pattern(1, 1 << 20), pattern(2, 50_000), pattern(3, 30_000)
    waiting = trio.CancelScope()
    outcome: list[bool] = []

    async def waiter() -> None:
        with waiting:
            await ws.send(waited)
        outcome.append(waiting.cancelled_caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.send, first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        waiting.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == [True]
        nursery.start_soon(peer.read_until, 1)
    assert peer.messages == [first]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, 3)
        await ws.send(last)
    assert peer.messages == [first, waited, last]
    assert peer.closes == []


async def check_cancelled_waiters_keep_call_order(make: PairMaker, cancelled: str) -> None:
    """Calls A (sending, blocked on the socket), B and C (waiting their turn); then B, C
    or both are cancelled while waiting. Nothing is lost and nothing overtakes: the peer
    gets A, B, C whole and in call order ("concurrent calls leave in call order",
    Transport.send), once a flush (or a later send) lets the cancelled bytes out."""
    pair = await make()
    ws, peer = pair.transport, pair.peer
    msgs = {"A": pattern(1, 1 << 20), "B": pattern(2, 50_000), "C": pattern(3, 30_000)}
    scopes = {name: trio.CancelScope() for name in "BC"}
    caught: dict[str, bool] = {}

    async def sender(name: str) -> None:
        with scopes[name]:
            await ws.send(msgs[name])
        caught[name] = scopes[name].cancelled_caught

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.send, msgs["A"])
        await trio.testing.wait_all_tasks_blocked()
        for name in "BC":
            nursery.start_soon(sender, name)
            await trio.testing.wait_all_tasks_blocked()
        for name in cancelled:
            scopes[name].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert caught == dict.fromkeys(cancelled, True)
        nursery.start_soon(peer.read_until, 3)
        await ws.flush()
    names: dict[bytes | str, str] = {m: n for n, m in msgs.items()}
    assert [names.get(m, "?") for m in peer.messages] == ["A", "B", "C"]
    assert caught == {"B": "B" in cancelled, "C": "C" in cancelled}
    assert peer.closes == []


async def check_unit_size_limit(make: PairMaker) -> None:
    """[ATP-WS-012] The transport's own receive limit: a unit of exactly the limit is
    delivered (also in fragments); one byte more, in one piece or in fragments, is
    skipped and handed on as Oversized with its first 24 bytes (text: a bounded prefix)
    for the session to answer ETOOBIG; the connection stays open for that answer."""
    pair = await make(max_unit=1000)
    ws, peer = pair.transport, pair.peer
    assert pair.max_unit == 1000
    await peer.send(0, b"a" * 1000)
    assert await ws.receive() == b"a" * 1000
    await peer.send_parts(0, ["é" * 200, "b" * 600])
    assert await ws.receive() == "é" * 200 + "b" * 600  # 400 + 600 bytes
    await peer.send(0, b"c" * 1001)
    assert await ws.receive() == Oversized(b"c" * 24, 1000)
    await peer.send_parts(0, [b"d" * 10, b"e" * 995, b"f" * 5000])
    assert await ws.receive() == Oversized(b"d" * 10 + b"e" * 14, 1000)
    await peer.send(0, "t" * 3000)
    got = await ws.receive()
    assert isinstance(got, Oversized) and got.prefix == "t" * 256
    # the connection is still usable: a message within the limit comes through
    await peer.send(0, b"ok")
    assert await ws.receive() == b"ok"
    assert not ws.closed
