"""The transport checker: what every ATP transport's send path and close must do.

Modelled on trio's ``testing/_check_streams.py``: the checks are written once against a
*pair* — the transport under test (:class:`atp_proto.transports.base.Transport`, plus
``closed`` and ``abort()``) and a peer that reads what it sends — and each transport's
test module runs them by importing these test functions and defining the
``transport_pair`` fixture (a :data:`PairMaker`). WebSocket:
``tests/transports/ws/test_send_path.py``; QUIC adds its own module with its own pair.

The checks (moved whole from tests/router/test_ws_layer.py, sections 8-9): a send
cancelled while the socket is full or while waiting its turn loses nothing and tears
no framing; concurrent senders leave in call order; close after cancelled sends.
The pair's socket buffers are small, so "blocked on the socket" is quick to reach.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
import trio
import trio.testing

from atp_proto.frames import ErrorCode
from atp_proto.transports import TransportClosed

#: a broken send path tends to hang (a torn frame never completes): fail fast instead
SEND_DEADLINE = pytest.mark.deadline(10)


class Peer(Protocol):
    """The far end of a pair, as the checks read it."""

    messages: list[bytes | str]  #: whole messages received, in order
    closes: list[int]  #: close codes received
    bytes_read: int

    async def read_until(
        self, n_messages: int, chunk: int = 65536, delay: float = 0.0
    ) -> list[bytes | str]: ...
    async def read_for(self, seconds: float) -> None: ...
    async def read_until_close_and_answer(self) -> None: ...


@dataclass
class Pair:
    transport: Any  #: the Transport under test (also ``closed``, ``abort()``)
    peer: Peer
    close_code: Callable[[ErrorCode], int]  #: the binding's close code of an ErrorCode


PairMaker = Callable[[], Awaitable[Pair]]

__all__ = [
    "SEND_DEADLINE",
    "Pair",
    "PairMaker",
    "Peer",
    "test_cancelled_send_keeps_framing",
    "test_cancelled_twice_then_close",
    "test_cancelled_waiters_keep_call_order",
    "test_concurrent_senders_keep_call_order",
    "test_send_cancelled_while_waiting_for_its_turn",
]


def _pattern(tag: int, size: int) -> bytes:
    """Bytes whose every 4-byte word says which message and where: any torn or shifted
    framing shows up as a mismatch."""
    words = size // 8 + 1
    return b"".join(struct.pack("!II", tag, i) for i in range(words))[:size]


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


@SEND_DEADLINE
@pytest.mark.parametrize("then", ["send", "flush"])
async def test_cancelled_send_keeps_framing(transport_pair: PairMaker, then: str) -> None:
    """A large send blocked by a peer that does not read, then cancelled, leaves part of
    its frame unsent; the next send (or flush) sends that remainder first, so the peer
    parses the cancelled message complete and then the next one — no torn framing."""
    pair = await transport_pair()
    ws, peer = pair.transport, pair.peer
    big = _pattern(1, 2 << 20)
    after = _pattern(2, 70_000)
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
    await ws.abort()


@SEND_DEADLINE
async def test_cancelled_twice_then_close(transport_pair: PairMaker, nursery: trio.Nursery) -> None:
    """Two sends cancelled in a row (the second is cancelled while still sending the
    first's remainder): both messages reach the peer whole, then a close frame with the
    code the binding gives the ErrorCode (WebSocket: 4001 for ESEQ_RETRY); after it, send raises TransportClosed."""
    pair = await transport_pair()
    ws, peer = pair.transport, pair.peer
    m1, m2 = _pattern(1, 1 << 20), _pattern(2, 1 << 20)
    await _blocked_then_cancelled(ws, m1)
    await _blocked_then_cancelled(ws, m2)

    nursery.start_soon(peer.read_until_close_and_answer)
    with trio.fail_after(5):
        await ws.close_with_error(ErrorCode.ESEQ_RETRY, "bye")
    assert peer.messages == [m1, m2]
    assert peer.closes == [pair.close_code(ErrorCode.ESEQ_RETRY)]  # WebSocket: 4001
    with pytest.raises(TransportClosed):
        await ws.send(b"late")


@SEND_DEADLINE
async def test_send_cancelled_while_waiting_for_its_turn(transport_pair: PairMaker) -> None:
    """A send cancelled while it waits behind another sender is not lost and not torn:
    its message goes out whole right after the sender ahead (with the next send, or
    flush), then the later send (the Transport contract: a cancelled call leaves the
    connection usable; the session relies on it not to lose ATP frames it already took
    from its Connection)."""
    pair = await transport_pair()
    ws, peer = pair.transport, pair.peer
    first, waited, last = _pattern(1, 1 << 20), _pattern(2, 50_000), _pattern(3, 30_000)
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


@SEND_DEADLINE
@pytest.mark.parametrize("cancelled", ["B", "C", "BC"])
async def test_cancelled_waiters_keep_call_order(transport_pair: PairMaker, cancelled: str) -> None:
    """Calls A (sending, blocked on the socket), B and C (waiting their turn); then B, C
    or both are cancelled while waiting. Nothing is lost and nothing overtakes: the peer
    gets A, B, C whole and in call order ("concurrent calls leave in call order",
    Transport.send), once a flush (or a later send) lets the cancelled bytes out."""
    pair = await transport_pair()
    ws, peer = pair.transport, pair.peer
    msgs = {"A": _pattern(1, 1 << 20), "B": _pattern(2, 50_000), "C": _pattern(3, 30_000)}
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


@SEND_DEADLINE
async def test_concurrent_senders_keep_call_order(transport_pair: PairMaker) -> None:
    """Three tasks sending at once on one connection (bytes of many sizes and text) while
    the peer reads in small slow chunks: every message arrives intact, in the order of
    the send calls."""
    pair = await transport_pair()
    ws, peer = pair.transport, pair.peer
    calls: list[bytes | str] = []
    sizes = [5, 200_000, 1, 70_000, 3_000, 126, 65_536, 100_000]

    async def sender(task: int) -> None:
        for i, size in enumerate(sizes):
            msg: bytes | str
            if i % 4 == 3:
                msg = f"task {task} message {i} é€😀 " * (size // 20 + 1)
            else:
                msg = _pattern(task * 100 + i, size)
            calls.append(msg)  # no checkpoint between this and send claiming its turn
            await ws.send(msg)
            if i % 3 == 0:
                await trio.sleep(0)

    total = 3 * len(sizes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until, total, 4096, 0.0005)
        for task in range(3):
            nursery.start_soon(sender, task)
    assert len(calls) == total
    assert len(peer.messages) == total
    assert [len(m) for m in peer.messages] == [len(m) for m in calls]
    assert peer.messages == calls
    # the tasks really interleaved (otherwise the order test proves little)
    firsts = [calls.index(_pattern(t * 100, 5)) for t in range(3)]
    assert max(firsts) < len(sizes), firsts
