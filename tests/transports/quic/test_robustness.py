"""The QUIC binding under loss, vanished and hostile clients (spec §13.2, ATP-QUIC-010):
our client (:func:`atp_proto.client.connect` with ``quic://``) through a seeded lossy UDP
relay, and the independent aioquic peer for clients that flood or never read. Real UDP
sockets on loopback, a real router."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import trio

from atp_proto.client import Final, Partial, StreamError, connect
from atp_proto.frames import Limits
from atp_proto.testing.frames import F_FIN, T_CAPABILITIES, T_ERROR, build_frame, syn_frame
from atp_proto.transports.quic_server import reset_token

from ._aioquic_peer import Recorder, run_peer
from .test_udp_offload import probe_kernel


@pytest.mark.deadline(90)
@pytest.mark.parametrize("udp_offload", [True, False], indirect=True, ids=["offload", "plain"])
async def test_lossy_relay_every_stream_completes_in_order(
    udp_offload, quic_router, lossy_relay, cert
) -> None:
    """ATP-QUIC-002, ATP-SEQ-003: through a relay that drops 8 %, duplicates 8 % and
    reorders 10 % of the datagrams each way (seeded), 20 concurrent streams all complete
    and every stream's PARTIALs arrive complete and in order, then its FINAL. The relay
    also saw the router's Retry (address validation) go by. With UDP GSO / GRO at both
    ends where the kernel has them, and without."""
    router = await quic_router(adapters={"persona": "builtin:persona?latency_ms=1&chunks=30"})
    endpoint = router.quic_server._endpoint
    assert endpoint is not None and endpoint.gro == (udp_offload and probe_kernel()[1])
    relay, port = await lossy_relay(router.quic_port, seed=12, drop=0.08, dup=0.08, reorder=0.1)
    results: dict[int, list[Any]] = {}
    async with connect(f"quic://127.0.0.1:{port}", ca_file=cert.cert) as client:

        async def one(i: int) -> None:
            async with client.stream(f"prompt {i} " + "word " * 600) as st:
                results[i] = [item async for item in st]

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
    assert sorted(results) == list(range(20))
    for items in results.values():
        assert isinstance(items[-1], Final)
        partials = [p for p in items[:-1] if isinstance(p, Partial)]
        assert [p.content["chunk"] for p in partials] == list(range(30))
    assert relay.counts["in"] > 50  # enough traffic for the shares below to bite
    assert relay.counts["dropped"] > 0 and relay.counts["duplicated"] > 0
    assert relay.counts["reordered"] > 0
    assert relay.counts["retry"] >= 1


@pytest.mark.deadline(90)
@pytest.mark.parametrize("udp_offload", [True, False], indirect=True, ids=["offload", "plain"])
async def test_lossy_relay_bulk_answers_arrive_whole(
    udp_offload, quic_router, lossy_relay, cert
) -> None:
    """ATP-QUIC-010, ATP-SEQ-003: bursts of full datagrams both ways (100 KB prompts up,
    their echo down in 40 chunks) through a relay that drops 5 %, duplicates 5 % and
    reorders 10 %: every stream's answer arrives whole and in order. With UDP offload on
    (where the kernel has it) the router sent runs of datagrams in one segmented send
    each, and the relay saw them one by one as any peer does."""
    router = await quic_router(adapters={"echo": "builtin:echo?chunks=40"})
    endpoint = router.quic_server._endpoint
    relay, port = await lossy_relay(router.quic_port, seed=5, drop=0.05, dup=0.05, reorder=0.1)
    prompts = {i: f"stream {i}: " + "".join(f"{n:07d} " for n in range(12_500)) for i in range(4)}
    answers: dict[int, str] = {}
    async with connect(f"quic://127.0.0.1:{port}", ca_file=cert.cert) as client:

        async def one(i: int) -> None:
            async with client.stream(prompts[i], meta={"adapters": ["echo"]}) as st:
                items = [item async for item in st]
            assert isinstance(items[-1], Final)
            answers[i] = "".join(p.content["text"] for p in items if isinstance(p, Partial))

        async with trio.open_nursery() as nursery:
            for i in prompts:
                nursery.start_soon(one, i)
    assert answers == prompts
    assert relay.counts["dropped"] > 0 and relay.counts["reordered"] > 0
    assert endpoint is not None and endpoint.datagrams_sent > 50
    if udp_offload and probe_kernel()[0]:
        assert endpoint.send_calls < endpoint.datagrams_sent
    else:
        assert endpoint.send_calls == endpoint.datagrams_sent


@pytest.mark.deadline(60)
async def test_vanished_client_is_cleaned_up_after_the_idle_timeout(
    quic_router, lossy_relay, cert
) -> None:
    """ATP-TIME idle timeout over QUIC: a client that vanishes (the relay drops all its
    traffic) after a stream is closed by the router's idle timeout (1 s here); its
    session, its QUIC connection and every connection ID routed to it are forgotten."""
    router = await quic_router(limits=Limits(idle_timeout_ms=1000))
    relay, port = await lossy_relay(router.quic_port, seed=1, drop=0, dup=0, reorder=0)
    server = router.quic_server
    assert server is not None
    async with connect(f"quic://127.0.0.1:{port}", ca_file=cert.cert) as client:
        assert isinstance(await client.ask("hello"), Final)
        assert len(router.sessions) == 1 and len(server.transports) == 1
        relay.blackhole = True
        with trio.fail_after(10):
            while router.sessions or server.transports or server.connections:
                await trio.sleep(0.05)
    assert not server.connections


async def test_connection_id_change_keeps_the_session(quic_router, cert) -> None:
    """Datagrams are routed by connection ID, following ConnectionIdIssued: a client that
    switches to a new connection ID the router issued keeps its session."""
    router = await quic_router()
    server = router.quic_server
    assert server is not None
    async with connect(f"quic://127.0.0.1:{router.quic_port}", ca_file=cert.cert) as client:
        assert isinstance(await client.ask("one"), Final)
        transport = client._ws
        issued = {c for c, t in server.connections.items() if t in server.transports}
        transport.quic.change_connection_id()  # type: ignore[union-attr]
        assert isinstance(await client.ask("two"), Final)
        assert isinstance(await client.ask("three"), Final)
        assert len(router.sessions) == 1
    assert len(issued) >= 2  # the handshake's CID and those issued by NEW_CONNECTION_ID


async def test_stateless_reset_for_an_unknown_connection(quic_router) -> None:
    """A short-header packet for a connection ID the router does not know gets a
    stateless reset (RFC 9000 §10.3): smaller than the packet, ending in the token the
    router derives from that connection ID."""
    router = await quic_router()
    server = router.quic_server
    assert server is not None
    cid = os.urandom(8)
    packet = bytes([0x40 | 0x01]) + cid + os.urandom(51)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.sendto(packet, ("127.0.0.1", router.quic_port))
        with trio.fail_after(5):
            reply, _ = await sock.recvfrom(2048)
    assert 21 <= len(reply) < len(packet)
    assert reply[0] & 0xC0 == 0x40  # looks like a short-header packet
    assert reply[-16:] == reset_token(server._reset_key, cid)


async def test_bad_token_over_quic_is_esec_for_our_client(quic_router, cert, jwt_secret) -> None:
    """ATP-QUIC-008, ATP-QUIC-014: our client with a bad token: the router closes with
    0x106, and the client's stream ends with ESEC (from the ERROR or the close code)."""
    router = await quic_router(auth=True)
    async with connect(
        f"quic://127.0.0.1:{router.quic_port}", ca_file=cert.cert, token="bad"
    ) as client:
        with pytest.raises(StreamError) as err:
            await client.ask("hello")
    assert err.value.code == "ESEC"


@pytest.mark.deadline(60)
async def test_stream_flood_stays_bounded(quic_router, cert) -> None:
    """ATP-LIMIT, ATP-QUIC-010: a client opening 300 streams at once, with max_streams 8 at
    the router: every QUIC stream is answered (a FINAL, or an ERROR for a stream over the
    limit), the router never tracks more ATP streams than its limit allows, and QUIC
    stream credit keeps the open QUIC streams within aioquic's stream limit."""
    router = await quic_router(limits=Limits(max_streams=8))
    peak = {"atp": 0, "quic": 0}
    done = trio.Event()

    async def sample() -> None:
        while not done.is_set():
            for s in list(router.sessions.values()):
                peak["atp"] = max(peak["atp"], s.conn.open_streams)
                quic = getattr(s.transport, "quic", None)
                if quic is not None:
                    peak["quic"] = max(peak["quic"], len(quic._streams))
            await trio.sleep(0.002)

    async def script(peer: Recorder) -> dict[str, int]:
        peer.send(0, build_frame(T_CAPABILITIES, 0, 0, ext={"caps": {"versions": [1]}}))
        qsids = []
        for i in range(300):
            q = peer.next_stream()
            qsids.append(q)
            peer.send(q, syn_frame(2 * i + 1, f"flood {i}"))
        await peer.until(lambda: all(q in peer.fins for q in qsids), timeout=40)
        kinds = {"final": 0, "error": 0}
        for q in qsids:
            last = peer.frames(q)[-1]
            kinds["error" if last.type == T_ERROR else "final"] += int(
                last.type == T_ERROR or last.has(F_FIN)
            )
        return kinds

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        kinds = await trio.to_thread.run_sync(lambda: run_peer(router.quic_port, cert.cert, script))
        done.set()
    assert kinds["final"] + kinds["error"] == 300
    assert kinds["final"] >= 8
    assert 0 < peak["atp"] <= 8
    assert peak["quic"] <= 128 + 1  # aioquic's default max_streams_bidi, + the control stream


@pytest.mark.deadline(60)
async def test_never_reading_client_stays_bounded(quic_router, cert) -> None:
    """ATP-QUIC-010, ATP-FLOW: a client that opens 10 long streams with a 4 KiB window and
    never grants more credit: the router sends at most the window on each, stops the
    adapter (its output stalls), and what it holds in QUIC send buffers stays within the
    credit the client gave, however long the client does not read."""
    router = await quic_router(adapters={"persona": "builtin:persona?latency_ms=0&chunks=3000"})
    adapter = router.adapters["persona"]
    window = 4096
    seen: dict[str, Any] = {}

    async def script(peer: Recorder) -> dict[int, int]:
        caps = {"versions": [1], "initial_window": window}
        peer.send(0, build_frame(T_CAPABILITIES, 0, 0, ext={"caps": caps}))
        qsids = []
        for i in range(10):
            q = peer.next_stream()
            qsids.append(q)
            peer.send(q, syn_frame(2 * i + 1, "word " * 3000, ttl=0))
        await peer.until(lambda: all(len(peer.data.get(q, b"")) > 0 for q in qsids))
        import asyncio

        await asyncio.sleep(1.5)
        return {q: len(peer.data.get(q, b"")) for q in qsids}

    async def watch() -> None:
        await trio.sleep(1.0)
        seen["chunks_1s"] = adapter.chunks_out  # type: ignore[attr-defined]
        s = next(iter(router.sessions.values()))
        seen["pending_1s"] = s.transport.pending_bytes
        await trio.sleep(0.8)
        seen["chunks_2s"] = adapter.chunks_out  # type: ignore[attr-defined]
        seen["pending_2s"] = s.transport.pending_bytes

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        received = await trio.to_thread.run_sync(
            lambda: run_peer(router.quic_port, cert.cert, script)
        )
    # per stream: the window, plus at most one frame that started inside it
    assert all(0 < n <= window + 512 for n in received.values()), received
    assert seen["chunks_2s"] == seen["chunks_1s"] < 10 * 3000  # the adapters stopped
    assert seen["pending_2s"] <= 10 * (window + 512)


@pytest.mark.deadline(30)
async def test_drain_over_quic(quic_router, cert) -> None:
    """ATP-SESS-013, ATP-QUIC-004, ATP-QUIC-014 over QUIC: a draining router lets the open
    stream finish, refuses a new stream with EDRAINING, then closes the session with
    EDRAINING's code (0x109), from which the client learns why the session ended (the
    drain's ERROR on stream 0 only says "going away")."""
    router = await quic_router(
        adapters={"persona": "builtin:persona?latency_ms=100&chunks=5"}, grace_s=5.0
    )
    url = f"quic://127.0.0.1:{router.quic_port}"
    async with connect(url, ca_file=cert.cert) as client:
        async with client.stream("long enough to see the drain") as st:
            items = []
            async with trio.open_nursery() as nursery:
                async for item in st:
                    items.append(item)
                    if len(items) == 1:
                        nursery.start_soon(router.drain)
                        with trio.fail_after(5):
                            while not client.draining:
                                await trio.sleep(0.01)
                        with pytest.raises(StreamError) as refused:
                            await client.ask("too late")
        assert isinstance(items[-1], Final) and len(items) == 6
        assert refused.value.code == "EDRAINING"
        with trio.fail_after(5):
            while client.closed is None:
                await trio.sleep(0.01)
    assert client.closed.code == "EDRAINING"  # from the close code (ATP-QUIC-014)
    assert client._ws.peer_close_code == 0x109


@pytest.mark.deadline(90)
async def test_a_close_reason_that_is_no_text_closes_one_connection_only(quic_router, cert) -> None:
    """A close reason holding a lone surrogate (an application's text read with
    surrogateescape, say) cannot be UTF-8: the transport sends it with U+FFFD instead of
    raising in the sender, which over QUIC is the endpoint's, shared by every connection of
    the router's socket (before: UnicodeEncodeError there, every client cut off)."""
    router = await quic_router()
    server = router.quic_server
    assert server is not None
    url = f"quic://127.0.0.1:{router.quic_port}"
    async with connect(url, ca_file=cert.cert) as other, connect(url, ca_file=cert.cert) as one:
        assert isinstance(await one.ask("one"), Final)
        assert isinstance(await other.ask("other"), Final)
        theirs = one._ws
        cid = theirs.quic.host_cid  # type: ignore[union-attr]
        (mine,) = [t for t in server.transports if t.quic._peer_cid.cid == cid]
        await mine.close_with_error("EPROTO", "bad \udc80 text " + "x" * 500)
        with trio.fail_after(10):
            await theirs.terminated.wait()  # type: ignore[union-attr]
        assert theirs.peer_close_code == 0x100
        assert theirs.peer_close_reason.startswith("bad \ufffd text x")
        assert len(theirs.peer_close_reason) <= 120
        assert isinstance(await other.ask("still here"), Final)
