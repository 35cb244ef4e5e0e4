"""The points of spec §13.2 decided last (ATP-QUIC-023, -024, -025, ATP-FLAG-009), against
the independent peer: aioquic's own asyncio client in a thread (:mod:`._aioquic_peer`),
frames built by hand. Real UDP sockets on loopback, a real router, in-process adapters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio

from atp_proto.testing.frames import F_FIN, F_RST, T_DATA, T_ERROR, T_WINDOW_UPDATE, build_frame
from atp_proto.testing.frames import syn_frame as _syn

from ._aioquic_peer import Recorder
from .test_independent_peer import EPROTO_QUIC, caps_frame, ended, in_thread

SLOW = {"persona": "builtin:persona?latency_ms=40&chunks=200"}


async def pause(seconds: float) -> None:
    """The peer runs on asyncio in its thread: its pauses are asyncio's."""
    await asyncio.sleep(seconds)


def syn_frame(sid: int, prompt: str = "hello") -> bytes:
    return _syn(sid, prompt, ttl=20)


async def _sessions_gone(router: Any) -> None:
    with trio.fail_after(5):
        while router.sessions:
            await trio.sleep(0.02)


@pytest.mark.parametrize("case", ["syn_on_ended_id", "lower_id", "late_frame"])
async def test_new_quic_stream_naming_an_earlier_id_is_eproto(quic_router, cert, case: str) -> None:
    """ATP-QUIC-023: stream 5 served to its end and both sides of its QUIC stream ended, a
    new QUIC stream whose first frame names ATP stream 5 again (a SYN, or a late
    WINDOW_UPDATE) or a lower id (3, never used) closes the connection with 0x100."""
    router = await quic_router()

    async def script(peer: Recorder) -> int | None:
        peer.send(0, caps_frame())
        q = peer.next_stream()
        peer.send(q, syn_frame(5))
        await peer.until(lambda: q in peer.fins)
        peer.send(q, b"", end=True)  # ATP-QUIC-012: after the router's FIN
        await pause(0.1)
        q2 = peer.next_stream()
        if case == "syn_on_ended_id":
            peer.send(q2, syn_frame(5, "again"))
        elif case == "lower_id":
            peer.send(q2, syn_frame(3, "lower"))
        else:
            peer.send(q2, build_frame(T_WINDOW_UPDATE, 0, 5, ext={"credit": 100}))
        return await peer.closed()

    assert await in_thread(router, cert, script) == EPROTO_QUIC
    await _sessions_gone(router)


async def test_a_higher_id_after_a_refusal_is_served(quic_router, cert) -> None:
    """ATP-QUIC-023 lets through what ATP-STREAM-002 allows: a SYN refused (its meta is not
    a map: EPROTO on its QUIC stream) uses its id, and the next SYN on a higher id, on the
    next QUIC stream, is served on the same session."""
    router = await quic_router()

    async def script(peer: Recorder) -> Any:
        peer.send(0, caps_frame())
        q = peer.next_stream()
        peer.send(
            q, build_frame(T_DATA, 0x01, 5, 1, qos=1, ttl=8, ext={"meta": [1]}, raw_payload=b"\xa0")
        )
        await peer.until(lambda: ended(peer, q))
        q2 = peer.next_stream()
        peer.send(q2, syn_frame(7))
        await peer.until(lambda: q2 in peer.fins)
        return peer.frames(q), peer.frames(q2), peer.close_code

    refused, served, close = await in_thread(router, cert, script)
    assert refused[-1].type == T_ERROR and refused[-1].ext["error"]["code"] == "EPROTO"
    assert served[-1].has(F_FIN) and served[-1].type == T_DATA
    assert close is None


async def test_early_quic_fin_is_a_stream_error(quic_router, cert) -> None:
    """ATP-QUIC-024: the client's QUIC FIN on a running stream's QUIC stream ends that ATP
    stream with ERROR EPROTO on it, with the router's FIN and no STOP_SENDING (the client's
    side has ended); the adapter run stops and the session serves the next stream."""
    router = await quic_router(adapters=SLOW)
    adapter = router.adapters["persona"]

    async def script(peer: Recorder) -> Any:
        peer.send(0, caps_frame())
        q = peer.next_stream()
        peer.send(q, syn_frame(1, "word " * 200))
        await peer.until(lambda: len(peer.frames(q)) >= 1)
        peer.send(q, b"", end=True)  # before the router's FINAL: ATP-QUIC-012 broken
        await peer.until(lambda: q in peer.fins)
        await pause(0.2)  # a STOP_SENDING would come right after the ERROR
        q2 = peer.next_stream()
        peer.send(q2, syn_frame(3, "next"))
        await peer.until(lambda: q2 in peer.fins, timeout=30)
        return peer.frames(q), q in peer.stops, peer.frames(q2)

    with trio.fail_after(40):
        frames, stopped, nxt = await in_thread(router, cert, script)
    last = frames[-1]
    assert last.type == T_ERROR and last.ext["error"]["code"] == "EPROTO", last
    assert not stopped
    assert nxt[-1].has(F_FIN)
    assert adapter.chunks_out < 200  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["fin", "reset", "stop"])
async def test_ending_the_control_stream_is_eproto(quic_router, cert, how: str) -> None:
    """ATP-QUIC-025: the client's QUIC FIN, RESET_STREAM or STOP_SENDING on QUIC stream 0,
    with a stream open, closes the connection with 0x100 (EPROTO); the session and its
    stream are gone."""
    router = await quic_router(adapters=SLOW)

    async def script(peer: Recorder) -> int | None:
        peer.send(0, caps_frame())
        q = peer.next_stream()
        peer.send(q, syn_frame(1, "word " * 200))
        await peer.until(lambda: len(peer.frames(q)) >= 1)
        if how == "fin":
            peer.send(0, b"", end=True)
        elif how == "reset":
            peer._quic.reset_stream(0, 0x100)
            peer.transmit()
        else:
            peer._quic.stop_stream(0, 0x100)
            peer.transmit()
        return await peer.closed()

    assert await in_thread(router, cert, script) == EPROTO_QUIC
    await _sessions_gone(router)


async def test_bare_rst_on_a_never_opened_id_is_eproto(quic_router, cert) -> None:
    """ATP-FLAG-009, ATP-QUIC-006: a bare RST for ATP stream 9, never opened, as the first
    frame of a QUIC stream is answered on that QUIC stream with ERROR EPROTO, the router's
    FIN and STOP_SENDING 0x100; the session serves stream 11 next."""
    router = await quic_router()

    async def script(peer: Recorder) -> Any:
        peer.send(0, caps_frame())
        q = peer.next_stream()
        peer.send(q, build_frame(T_DATA, F_RST, 9, 1))
        await peer.until(lambda: q in peer.fins and q in peer.stops)
        q2 = peer.next_stream()
        peer.send(q2, syn_frame(11))
        await peer.until(lambda: q2 in peer.fins)
        return peer.frames(q), peer.stops[q], peer.frames(q2), peer.close_code

    frames, stop, nxt, close = await in_thread(router, cert, script)
    assert [f.type for f in frames] == [T_ERROR]
    assert frames[0].stream_id == 9 and frames[0].ext["error"]["code"] == "EPROTO"
    assert stop == EPROTO_QUIC
    assert nxt[-1].has(F_FIN) and close is None
