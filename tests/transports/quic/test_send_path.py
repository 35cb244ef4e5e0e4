"""The QUIC transport's send path and close, as the transport checker
(tests/transports/checker.py) asks of every binding — restated for a per-stream transport:
the checker's message checks (a cancelled ``send`` keeps framing, concurrent senders keep
call order) are about a transport whose send can block part-way; ``send_streams`` never
blocks (it hands bytes to aioquic at once; backpressure is ``pending_bytes``,
ATP-QUIC-010), so what is checked here is what those checks protect: every byte of every
item reaches the peer on its stream, in call order, torn nowhere, FIN where asked, and a
close carries the binding's code for the ErrorCode, after which sending raises
TransportClosed. The peer is aioquic's asyncio client (an independent implementation)."""

from __future__ import annotations

import struct
from typing import Any

import trio

from atp_proto.frames import ErrorCode
from atp_proto.transports.base import ChannelData, TransportClosed, quic_error_code
from atp_proto.transports.quic_server import QuicServer, QuicServerConfig, QuicTransport

from ._aioquic_peer import Recorder, run_peer


def _pattern(tag: int, size: int) -> bytes:
    words = size // 8 + 1
    return b"".join(struct.pack("!II", tag, i) for i in range(words))[:size]


def _header(atp_sid: int) -> bytes:
    """A 24-byte frame header naming ``atp_sid`` (no body): what maps a QUIC stream."""
    return struct.pack("!BBBBIIHHII", 1, 1, 0, 0, atp_sid, 0, 0, 0, 0, 0)


async def test_items_reach_their_streams_whole_in_order_then_close(cert) -> None:
    items = [
        (1, _pattern(1, 300_000), False),
        (3, _pattern(3, 5), False),
        (0, _pattern(0, 2_000), False),
        (1, _pattern(11, 70_000), True),
        (5, _pattern(5, 1_000_000), True),
        (3, _pattern(33, 1), False),
    ]
    outcome: dict[str, Any] = {}
    served = trio.Event()

    async def handler(t: QuicTransport) -> None:
        seen: set[int] = set()
        with trio.fail_after(10):
            while seen != {1, 3, 5}:
                item = await t.receive()
                assert isinstance(item, ChannelData)
                seen.add(item.channel)
        for i in range(0, len(items), 2):  # several calls, as the session's writer makes
            await t.send_streams(items[i : i + 2])
        outcome["pending_after_send"] = t.pending_bytes
        with trio.fail_after(10):
            while t.pending_bytes:  # acknowledged by the peer: buffers empty again
                await trio.sleep(0.01)
        await t.close_with_error(ErrorCode.ESEQ_RETRY, "bye")
        try:
            t.try_send_streams([(3, b"late", False)])
        except TransportClosed:
            outcome["late"] = "TransportClosed"
        served.set()

    server = QuicServer(QuicServerConfig(cert_file=cert.cert, key_file=cert.key), handler)

    async def script(peer: Recorder) -> Recorder:
        peer.send(0, b"")
        for atp_sid in (1, 3, 5):
            peer.send(peer.next_stream(), _header(atp_sid))
        await peer.closed(timeout=20)
        return peer

    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        peer = await trio.to_thread.run_sync(lambda: run_peer(port, cert.cert, script))
        await served.wait()
        nursery.cancel_scope.cancel()
    qsid = {1: 4, 3: 8, 5: 12, 0: 0}
    for atp_sid, q in qsid.items():
        expected = b"".join(data for sid, data, _ in items if sid == atp_sid)
        assert bytes(peer.data.get(q, b"")) == expected, atp_sid
    assert peer.fins == {4, 12}  # FIN exactly where an item ended its stream
    assert peer.close_code == quic_error_code(ErrorCode.ESEQ_RETRY) == 0x101
    assert outcome["late"] == "TransportClosed"
    assert outcome["pending_after_send"] > 0  # counted until acknowledged (ATP-QUIC-010)
