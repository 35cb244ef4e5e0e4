"""A QUIC stream whose first frame opens no ATP stream (a frame type the router does not
know, which it ignores) and then ends (the client's FIN): the router ends its side too,
so the QUIC stream is done both ways and forgotten. It held it until the session ended:
128 such streams used up the client's stream limit, and the transport's tables grew with
them (found by a review, session 6). aioquic's own asyncio client is the peer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio

from atp_proto.testing.certs import CertFiles
from atp_proto.testing.frames import T_ERROR, T_WINDOW_UPDATE, build_frame

from .test_independent_peer import caps_frame, in_thread

N = 300  # past the 128 QUIC streams the router grants at once


@pytest.mark.parametrize("kind", ["unknown-type", "window-update"])
async def test_ended_streams_that_opened_nothing_are_ended_and_forgotten(
    quic_router: Any, cert: CertFiles, kind: str
) -> None:
    router = await quic_router()
    held: dict[str, int] = {}

    async def script(peer: Any) -> tuple[int | None, int, int]:
        peer.send(0, caps_frame())
        await asyncio.sleep(0.2)
        sent = []
        for i in range(N):
            q = peer.next_stream()
            sent.append(q)
            frame = bytearray(build_frame(T_WINDOW_UPDATE, 0, 1 + 2 * i, ext={"credit": 100}))
            if kind == "unknown-type":
                frame[1] = 0x3E  # a type v1 does not define: ignored, opens nothing
            peer.send(q, bytes(frame), end=True)
        for _ in range(150):
            if len(peer.fins) >= N:
                break
            await asyncio.sleep(0.02)
        errors = sum(1 for q in sent if T_ERROR in [f.type for f in peer.frames(q)])
        return peer.close_code, len(peer.fins), errors

    async def probe() -> None:
        await trio.sleep(2.5)
        for session in router.sessions.values():
            held["streams"] = len(session.transport._q2a)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        close_code, fins, errors = await in_thread(router, cert, script)
    assert close_code is None  # the session goes on
    assert fins == N  # every QUIC stream ended by the router, past the stream limit
    # a WINDOW_UPDATE on a never-opened stream still gets its ERROR before the end
    # (ATP-STREAM-003); an ignored frame gets nothing but the end
    assert errors == (N if kind == "window-update" else 0), errors
    assert held.get("streams", 0) <= 2, held  # the control stream, not 300 streams
