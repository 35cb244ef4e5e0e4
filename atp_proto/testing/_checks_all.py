"""The transport checker's checks that every binding must pass (see
:mod:`.transport_checker`): ordering both ways, large units, backpressure, the close code,
abrupt peer loss, concurrent senders."""

from __future__ import annotations

import trio

from atp_proto.frames import ErrorCode
from atp_proto.transports.base import TransportClosed

from ._checker_base import PairMaker, joined, pattern, receive_all, send_unit, until

__all__ = [
    "check_abrupt_peer_loss",
    "check_backpressure",
    "check_close_code",
    "check_concurrent_senders",
    "check_large_units",
    "check_received_in_order",
    "check_units_in_order",
]


async def check_units_in_order(make: PairMaker) -> None:
    """Units of many sizes, on several channels (one on a message transport), sent in
    several calls: each channel's bytes reach the peer whole, in call order; a message
    transport keeps every unit's boundaries; a per-stream one ends exactly the channels
    whose last item said ``end`` (FIN, ATP-QUIC-006)."""
    pair = await make()
    ch = pair.channels
    a, b, c = ch[1 % len(ch)], ch[2 % len(ch)], ch[3 % len(ch)]
    items = [
        (a, pattern(1, 300_000), False),
        (b, pattern(3, 5), False),
        (ch[0], pattern(0, 2_000), False),
        (a, pattern(11, 70_000), True),
        (c, pattern(5, 1_000_000), True),
        (b, pattern(33, 1), False),
    ]
    async with trio.open_nursery() as nursery:
        if not pair.per_stream:  # a message transport's peer reads only when asked
            nursery.start_soon(pair.peer.read_until_bytes, 0, sum(len(d) for _, d, _ in items))
        if pair.per_stream:  # several calls, as the session's writer makes
            for i in range(0, len(items), 2):
                await pair.transport.send_streams(items[i : i + 2])
        else:
            for channel, data, end in items:
                await send_unit(pair, channel, data, end)
    for channel in set(ch):
        want = b"".join(d for c_, d, _ in items if c_ == channel)
        await pair.peer.read_until_bytes(channel, len(want))
        assert pair.peer.received(channel) == want, f"channel {channel}"
    if pair.per_stream:
        # FIN exactly where an item ended its stream; none from an end that follows the
        # peer's FIN instead (QUIC's client end, ATP-QUIC-012)
        assert pair.peer.fins == ({a, c} if pair.fin_on_end else set())
    else:
        assert pair.peer.messages == [d for _, d, _ in items]
    assert pair.peer.closes == []


async def check_received_in_order(make: PairMaker) -> None:
    """The other direction: units the peer sends, of many sizes and on every channel,
    come out of ``receive`` whole and in order (bytes of one channel may be joined or
    split on a byte-stream binding; a message transport hands each message whole)."""
    pair = await make()
    sent: dict[int, list[bytes]] = {}
    plan: list[tuple[int, bytes]] = []
    for i, size in enumerate([1, 5_000, 200_000, 24, 65_536, 3]):
        channel = pair.channels[i % len(pair.channels)]
        unit = pattern(100 + i, size)
        sent.setdefault(channel, []).append(unit)
        plan.append((channel, unit))

    async def peer_sends() -> None:  # while the transport reads: the buffers are small
        for channel, unit in plan:
            await pair.peer.send(channel, unit)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_sends)
        with trio.fail_after(10):
            got = await receive_all(pair, {c: b"".join(u) for c, u in sent.items()})
    for channel, units in sent.items():
        assert joined(got[channel]) == b"".join(units), f"channel {channel}"
        if not pair.per_stream:
            assert got[channel] == units


async def check_large_units(make: PairMaker) -> None:
    """A 3 MiB unit each way crosses intact (below the pair's unit limit)."""
    pair = await make()
    big = pattern(7, 3 << 20)
    channel = pair.channels[-1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pair.peer.read_until_bytes, channel, len(big))
        await send_unit(pair, channel, big)
    await until(lambda: len(pair.peer.received(channel)) >= len(big), "the big unit")
    assert pair.peer.received(channel) == big
    back = pattern(8, 3 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pair.peer.send, channel, back)
        with trio.fail_after(20):
            got = await receive_all(pair, {channel: back})
    assert joined(got[channel]) == back


async def check_backpressure(make: PairMaker) -> None:
    """A peer that does not read holds the sender back, and the data flows once it
    reads. Message transport: ``send`` of 2 MiB stays blocked on the full socket. Per-
    stream transport (ATP-QUIC-010): ``send_streams`` returns at once but the bytes stay
    counted in ``pending_bytes`` (unacknowledged) while the peer is silent, and fall to 0,
    with ``on_writable`` called, once it acknowledges."""
    pair = await make()
    t, peer = pair.transport, pair.peer
    channel = pair.channels[-1]
    big = pattern(9, 2 << 20)
    await peer.stall()
    if pair.per_stream:
        woken: list[int] = []
        t.on_writable = lambda: woken.append(t.pending_bytes)
        await t.send_streams([(channel, big, False)])
        assert t.pending_bytes > 0  # counted until acknowledged
        await trio.sleep(0.3)
        assert t.pending_bytes > 0, "bytes counted as sent to a peer that acknowledged none"
        assert woken == []
        await peer.resume()
        await until(lambda: t.pending_bytes == 0, "the peer's acknowledgements", 15)
        assert woken, "on_writable was never called"
    else:
        done = trio.Event()

        async def sender() -> None:
            await t.send(big)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.sleep(0.3)
            assert not done.is_set(), "a 2 MiB send finished though the peer reads nothing"
            assert peer.bytes_read == 0
            nursery.start_soon(peer.read_until_bytes, channel, len(big))
            with trio.fail_after(10):
                await done.wait()
    await peer.read_until_bytes(channel, len(big))
    await until(lambda: len(peer.received(channel)) >= len(big), "the blocked unit")
    assert peer.received(channel) == big


async def check_close_code(make: PairMaker) -> None:
    """``close_with_error`` reaches the peer as the binding's close code of the
    ErrorCode (WebSocket 4001, QUIC 0x101 for ESEQ_RETRY; ATP-ERR-002, ATP-QUIC-004);
    afterwards the transport is ``closed`` and a send raises TransportClosed."""
    pair = await make()
    t, peer = pair.transport, pair.peer
    await send_unit(pair, pair.channels[0], b"before")
    # delivered first: a QUIC close discards stream data not yet sent (the close code is
    # the authority then, ATP-QUIC-014), so a session lets its output drain before it
    await peer.read_until_bytes(pair.channels[0], len(b"before"))
    if pair.per_stream:
        await until(lambda: t.pending_bytes == 0, "the peer's acknowledgement")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read_until_close_and_answer)
        with trio.fail_after(5):
            await t.close_with_error(ErrorCode.ESEQ_RETRY, "bye")
    await until(lambda: bool(peer.closes), "the close")
    assert peer.closes == [pair.close_code(ErrorCode.ESEQ_RETRY)]
    assert peer.received(pair.channels[0]) == b"before"
    assert t.closed
    try:
        if pair.per_stream:
            t.try_send_streams([(pair.channels[-1], b"late", False)])
        else:
            await t.send(b"late")
    except TransportClosed:
        pass
    else:
        raise AssertionError("a send after the close did not raise TransportClosed")


async def check_abrupt_peer_loss(make: PairMaker) -> None:
    """A peer that vanishes without a close (TCP reset; QUIC: silence until the idle
    timeout): ``receive`` raises TransportClosed, the transport is ``closed``, and a
    send raises TransportClosed — no other exception, no hang."""
    pair = await make()
    t, peer = pair.transport, pair.peer
    await send_unit(pair, pair.channels[-1], pattern(1, 1000))
    await peer.read_until_bytes(pair.channels[-1], 1000)
    await peer.vanish()
    with trio.fail_after(20):
        try:
            while True:
                await t.receive()
        except TransportClosed:
            pass
    assert t.closed
    try:
        with trio.fail_after(5):
            for _ in range(20):  # the first writes may still reach the kernel's buffer
                await send_unit(pair, pair.channels[-1], pattern(2, 100_000))
    except TransportClosed:
        pass
    else:
        raise AssertionError("sends to a vanished peer did not raise TransportClosed")


async def check_concurrent_senders(make: PairMaker) -> None:
    """Three tasks sending at once on one connection and one channel (bytes of many sizes,
    and text on a message transport) while the peer reads in small slow chunks: every
    unit arrives intact, in the order of the send calls."""
    pair = await make()
    peer = pair.peer
    channel = pair.channels[-1]
    calls: list[bytes | str] = []
    sizes = [5, 200_000, 1, 70_000, 3_000, 126, 65_536, 100_000]

    async def sender(task: int) -> None:
        for i, size in enumerate(sizes):
            msg: bytes | str
            if i % 4 == 3 and not pair.per_stream:
                msg = f"task {task} message {i} é€😀 " * (size // 20 + 1)
            else:
                msg = pattern(task * 100 + i, size)
            calls.append(msg)  # no checkpoint between this and send claiming its turn
            await send_unit(pair, channel, msg)
            if i % 3 == 0:
                await trio.sleep(0)

    total = 3 * len(sizes)
    async with trio.open_nursery() as nursery:
        if not pair.per_stream:
            nursery.start_soon(peer.read_until, total, 4096, 0.0005)
        for task in range(3):
            nursery.start_soon(sender, task)
    assert len(calls) == total
    if pair.per_stream:
        want = joined(calls)
        await until(lambda: len(peer.received(channel)) >= len(want), "every unit")
        assert peer.received(channel) == want
    else:
        assert len(peer.messages) == total
        assert [len(m) for m in peer.messages] == [len(m) for m in calls]
        assert peer.messages == calls
    # the tasks really interleaved (otherwise the order test proves little)
    firsts = [calls.index(pattern(task * 100, 5)) for task in range(3)]
    assert max(firsts) < len(sizes), firsts
