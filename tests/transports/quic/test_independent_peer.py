"""The router's QUIC binding (spec §13.2) against an independent peer: aioquic's own
asyncio client in a thread (:mod:`._aioquic_peer`), frames built by hand with ``struct`` +
``cbor2``. Real UDP sockets on loopback, a real router, in-process adapters."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from atp_proto.router import issue_token
from atp_proto.testing.frames import (
    F_FIN,
    F_HB,
    F_MORE,
    F_RST,
    T_CAPABILITIES,
    T_DATA,
    T_ERROR,
    T_WINDOW_UPDATE,
    build_frame,
    syn_frame,
)

from ._aioquic_peer import Recorder, run_peer

CAPS = {"versions": [1]}
EPROTO_QUIC, ESEC_QUIC, EBUDGET_QUIC = 0x100, 0x106, 0x103


def caps_frame(auth: str | None = None) -> bytes:
    caps = dict(CAPS, auth=auth) if auth is not None else CAPS
    return build_frame(T_CAPABILITIES, 0, 0, ext={"caps": caps})


def ended(peer: Recorder, qsid: int) -> bool:
    frames = peer.frames(qsid)
    return bool(frames) and (frames[-1].has(F_FIN) or frames[-1].type == T_ERROR)


async def in_thread(router: Any, cert: Any, script: Any, **kw: Any) -> Any:
    return await trio.to_thread.run_sync(
        lambda: run_peer(router.quic_port, cert.cert, script, **kw)
    )


@pytest.mark.parametrize("udp_offload", [True, False], indirect=True, ids=["offload", "plain"])
async def test_independent_client_completes_streams(udp_offload, quic_router, cert) -> None:
    """ATP-QUIC-001, ATP-QUIC-002, ATP-QUIC-003, ATP-QUIC-011, ATP-QUIC-013, ATP-QUIC-009:
    an aioquic asyncio client with ALPN atp/1 sends CAPABILITIES on QUIC stream 0 and a SYN
    on its next bidirectional stream; the router's CAPABILITIES comes back on stream 0
    (without caps.auth), the stream's PARTIALs then FINAL on the SYN's QUIC stream, that
    stream ends with a QUIC FIN, and a second stream on the same session does the same.
    The router's socket with UDP GSO / GRO where the kernel has them, and without."""
    router = await quic_router()

    async def script(peer: Recorder) -> dict[str, Any]:
        peer.send(0, caps_frame())
        out: dict[str, Any] = {}
        for atp_sid, prompt in ((1, "first prompt here"), (3, "second one")):
            q = peer.next_stream()
            peer.send(q, syn_frame(atp_sid, prompt))
            await peer.until(lambda q=q: q in peer.fins)
            out[atp_sid] = (q, peer.frames(q))
            peer.send(q, b"", end=True)  # ATP-QUIC-012: after the router's FIN
        out["control"] = peer.frames(0)
        out["close"] = peer.close_code
        return out

    out = await in_thread(router, cert, script)
    control = out["control"]
    assert [f.type for f in control] == [T_CAPABILITIES]
    assert "auth" not in control[0].ext["caps"]
    for atp_sid in (1, 3):
        q, frames = out[atp_sid]
        assert q in (4, 8)  # client-opened bidirectional streams after the control stream
        assert {f.stream_id for f in frames} == {atp_sid}
        assert all(f.has(F_MORE) for f in frames[:-1]) and frames[-1].has(F_FIN)
        assert len(frames) >= 2
        assert frames[-1].body()["content"]["answer"]  # the FINAL's result
        assert all(f.body()["content"]["adapter"] == "persona" for f in frames[:-1])
    assert out["close"] is None  # the session was still open


async def test_wrong_alpn_fails_the_handshake(quic_router, cert) -> None:
    """ATP-QUIC-001: a client offering another ALPN gets no connection."""
    router = await quic_router()

    async def script(peer: Recorder) -> None:  # pragma: no cover - never connects
        raise AssertionError("connected without ALPN atp/1")

    with pytest.raises(ConnectionError):
        await in_thread(router, cert, script, alpn="h3")


@pytest.mark.parametrize(
    "case", ["other_stream", "stream0_off_control", "duplicate", "ended_target", "uni"]
)
async def test_frame_on_the_wrong_quic_stream_is_eproto(quic_router, cert, case: str) -> None:
    """ATP-QUIC-005, ATP-QUIC-011, ATP-QUIC-016: a frame for ATP stream 3 on ATP stream 1's
    QUIC stream, a stream-0 frame off the control stream, a second QUIC stream naming an
    ATP stream that has one, a frame for an ended ATP stream on another stream's QUIC
    stream, a unidirectional stream: each closes the connection with 0x100 (EPROTO)."""
    router = await quic_router()

    async def script(peer: Recorder) -> int | None:
        peer.send(0, caps_frame())
        q1 = peer.next_stream()
        peer.send(q1, syn_frame(1, "hello"))
        if case == "other_stream":
            peer.send(q1, build_frame(T_WINDOW_UPDATE, 0, 3, ext={"credit": 1000}))
        elif case == "stream0_off_control":
            q2 = peer.next_stream()
            peer.send(q2, build_frame(T_DATA, F_HB, 0))
        elif case == "duplicate":
            q2 = peer.next_stream()
            peer.send(q2, syn_frame(1, "again"))
        elif case == "ended_target":
            await peer.until(lambda: ended(peer, q1))
            q2 = peer.next_stream()
            peer.send(q2, syn_frame(3, "third"))
            peer.send(q2, build_frame(T_WINDOW_UPDATE, 0, 1, ext={"credit": 1000}))
        else:
            uni = peer._quic.get_next_available_stream_id(is_unidirectional=True)
            peer.send(uni, b"\x01\x00")
        return await peer.closed()

    assert await in_thread(router, cert, script) == EPROTO_QUIC
    with trio.fail_after(5):
        while router.sessions:
            await trio.sleep(0.02)


@pytest.mark.parametrize("case", ["bad_token", "no_auth", "syn_first", "valid"])
async def test_caps_auth(quic_router, cert, jwt_secret, case: str) -> None:
    """ATP-QUIC-008, ATP-QUIC-009, ATP-QUIC-017, ATP-QUIC-018: with auth configured, the
    first frame of the control stream must be CAPABILITIES with a valid bearer token in
    caps.auth; a bad or missing token, or a SYN first, closes the connection with 0x106
    (ESEC). A valid one serves streams, and a later CAPABILITIES carrying another (bad)
    caps.auth is ignored."""
    router = await quic_router(auth=True)
    token = issue_token(jwt_secret.encode())

    async def script(peer: Recorder) -> Any:
        peer.send(0, b"")  # the control stream exists (QUIC stream 0), no frame on it yet
        q = peer.next_stream()
        if case == "syn_first":
            peer.send(q, syn_frame(1, "hi"))
            await trio_sleep(0.05)
            peer.send(0, caps_frame(f"Bearer {token}"))
        else:
            auth = {"bad_token": "Bearer not-a-jwt", "no_auth": None}.get(case, f"Bearer {token}")
            peer.send(0, caps_frame(auth))
            if case == "valid":
                peer.send(0, caps_frame("Bearer not-a-jwt"))  # later: ignored
            peer.send(q, syn_frame(1, "hi"))
        if case == "valid":
            await peer.until(lambda: q in peer.fins)
            return peer.frames(0), peer.frames(q)
        return await peer.closed()

    result = await in_thread(router, cert, script)
    if case == "valid":
        control, frames = result
        assert frames[-1].has(F_FIN) and frames[-1].type == T_DATA
        assert all("auth" not in f.ext.get("caps", {}) for f in control)
    else:
        assert result == ESEC_QUIC


async def trio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_error_on_a_stream_is_frame_then_fin_then_stop_sending(quic_router, cert) -> None:
    """ATP-QUIC-006, ATP-QUIC-013: a stream the router ends with ERROR (EBUDGET: a window
    too small) carries the ERROR frame, whole, then the QUIC FIN; the router stops the
    client's side with STOP_SENDING 0x103 (EBUDGET's QUIC code), and the session goes on."""
    router = await quic_router()

    async def script(peer: Recorder) -> Any:
        peer.send(0, caps_frame())
        q = peer.next_stream()
        syn = build_frame(
            T_DATA,
            0x01,
            1,
            1,
            qos=1,
            ext={"window": {"max_tokens": 1}, "meta": {"task_type": "qa"}},
            payload={"type": "agent.task", "content": {"prompt": "a long prompt " * 20}},
        )
        peer.send(q, syn)
        await peer.until(lambda: q in peer.fins and q in peer.stops)
        q2 = peer.next_stream()
        peer.send(q2, syn_frame(3, "next"))
        await peer.until(lambda: q2 in peer.fins)
        return peer.frames(q), peer.stops[q], peer.frames(q2)

    frames, stop_code, after = await in_thread(router, cert, script)
    assert [f.type for f in frames] == [T_ERROR]
    assert frames[0].has(F_RST) and frames[0].ext["error"]["code"] == "EBUDGET"
    assert stop_code == EBUDGET_QUIC
    assert after[-1].has(F_FIN)


async def test_peer_reset_stream_cancels_the_atp_stream(quic_router, cert) -> None:
    """ATP-QUIC-006: the client resetting an ATP stream's QUIC stream (RESET_STREAM and
    STOP_SENDING) resets the ATP stream: the router stops its adapter run, answers
    STOP_SENDING with RESET_STREAM, and the session serves the next stream."""
    router = await quic_router(adapters={"persona": "builtin:persona?latency_ms=50&chunks=400"})
    adapter = router.adapters["persona"]

    async def script(peer: Recorder) -> Any:
        peer.send(0, caps_frame())
        q = peer.next_stream()
        peer.send(q, syn_frame(1, "word " * 400, ttl=0))
        await peer.until(lambda: len(peer.frames(q)) >= 2)
        peer._quic.reset_stream(q, 0x1FF)
        peer._quic.stop_stream(q, 0x1FF)
        peer.transmit()
        await peer.until(lambda: q in peer.resets)
        q2 = peer.next_stream()
        peer.send(q2, syn_frame(3, "next", adapters=["persona"]))
        await peer.until(lambda: q2 in peer.fins, timeout=60)
        return peer.resets[q]

    with trio.fail_after(40):
        code = await in_thread(router, cert, script)
    assert code == 0x1FF  # RESET_STREAM answering our STOP_SENDING carries its code
    assert adapter.chunks_out < 400  # type: ignore[attr-defined]


async def test_syns_arriving_out_of_order_are_taken_in_quic_stream_order(quic_router, cert) -> None:
    """ATP-QUIC-021, ATP-STREAM-002: QUIC delivers streams independently, so the SYN of a
    later stream may arrive first; the router takes new streams in QUIC stream id order,
    and both streams complete (no EPROTO for "stream ids must increase")."""
    router = await quic_router()

    async def script(peer: Recorder) -> Any:
        peer.send(0, caps_frame())
        q1 = peer.next_stream()
        peer._quic.send_stream_data(q1, b"")  # opened (id taken), nothing sent yet
        q2 = peer.next_stream()
        peer.send(q2, syn_frame(3, "second, sent first"))
        import asyncio

        await asyncio.sleep(0.1)  # the later SYN is at the router, waiting for its turn
        early = dict(peer.data)
        peer.send(q1, syn_frame(1, "first, sent second"))
        await peer.until(lambda: q1 in peer.fins and q2 in peer.fins)
        return early, peer.frames(q1), peer.frames(q2)

    early, first, second = await in_thread(router, cert, script)
    assert set(early) <= {0}  # nothing came back on stream 3 before stream 1 opened
    assert first[-1].has(F_FIN) and first[-1].type == T_DATA
    assert second[-1].has(F_FIN) and second[-1].type == T_DATA


async def test_no_caps_auth_in_time_closes_with_esec(quic_router, cert, jwt_secret) -> None:
    """ATP-QUIC-008, ATP-QUIC-018: with auth configured, a client that connects and never
    sends its CAPABILITIES is closed with 0x106 once the handshake timeout has passed."""
    router = await quic_router(auth=True, handshake_timeout_s=0.5)

    async def script(peer: Recorder) -> int | None:
        return await peer.closed(timeout=10)

    assert await in_thread(router, cert, script) == ESEC_QUIC
