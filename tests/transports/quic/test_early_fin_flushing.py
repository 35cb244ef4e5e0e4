"""[ATP-QUIC-024] The client's early QUIC FIN on a stream whose FINAL is already made but
waits for credit (a small initial_window): no WINDOW_UPDATE can follow that FIN, so the
router ends the stream with ERROR EPROTO and its FIN instead of holding the FINAL until
the session ends (it did: the stream, closed by the router's FIN in its outbox, was taken
as ended). aioquic's own asyncio client is the peer (found by a review, session 6)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from atp_proto.testing.certs import CertFiles
from atp_proto.testing.frames import T_CAPABILITIES, T_ERROR, build_frame, syn_frame

from .test_independent_peer import in_thread


async def test_early_fin_while_the_final_waits_for_credit_gets_an_error(
    quic_router: Any, cert: CertFiles
) -> None:
    router = await quic_router(adapters={"persona": "builtin:persona?latency_ms=1&chunks=2"})

    async def script(peer: Any) -> tuple[list[int], list[int], bool]:
        caps = {"caps": {"versions": [1], "initial_window": 400}}
        peer.send(0, build_frame(T_CAPABILITIES, 0, 0, ext=caps))
        q = peer.next_stream()
        peer.send(q, syn_frame(1, "hello there", ttl=6000))
        await asyncio.sleep(1.0)  # the answer is made; the FINAL waits for credit
        before = [f.type for f in peer.frames(q)]
        ended_before = q in peer.fins
        peer.send(q, b"", end=True)  # FIN before the router's end (breaks ATP-QUIC-012)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 and q not in peer.fins:
            await asyncio.sleep(0.02)
        after = [f.type for f in peer.frames(q)][len(before) :]
        return before, after, (not ended_before) and q in peer.fins

    before, after, fin = await in_thread(router, cert, script)
    assert T_ERROR not in before, before  # the stream was still waiting, not ended
    assert fin, (before, after)  # the router ended its side
    assert after == [T_ERROR], (before, after)  # with ERROR, and no FINAL after it
