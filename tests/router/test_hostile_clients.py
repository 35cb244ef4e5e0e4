"""Regression tests from a review of what one client can do to the router and to other
tenants (ATP-LIMIT-002, ATP-ERR-005, ATP-ERR-006, ATP-FLOW-006)."""

from __future__ import annotations

import cbor2
import pytest
import trio
import trio_websocket

from atp_proto.client import StreamError, connect
from atp_proto.frames import Connection, Flags, Frame, Limits, Role, encode_frame
from atp_proto.session import READ_PAUSE_BYTES

from .conftest import ws_url


async def test_flood_of_heartbeats_without_reading_is_bounded(start_router) -> None:
    """ATP-LIMIT-002: replies the router generates (HB|ACK) stop it reading when the peer
    does not take them; its queued output stays bounded."""
    router = await start_router()
    hb = encode_frame(Frame(0, Flags.HB, 0, payload=b"x" * 64)) * 8000  # ~700 kB a message
    queued: list[int] = []
    # The client never reads and the router has stopped reading it, so not even the
    # client's close frame can be sent: the test drops the connection by cancelling.
    with trio.move_on_after(6):
        async with trio_websocket.open_websocket_url(ws_url(router), message_queue_size=0) as ws:
            with trio.move_on_after(3):
                for _ in range(400):  # up to ~280 MB if nothing pushed back
                    await ws.send_message(hb)
            session = next(iter(router.sessions.values()))
            queued.append(session.conn.queued_bytes)
    assert queued, "the flood phase did not complete"
    assert queued[0] <= READ_PAUSE_BYTES + len(hb)


async def test_client_resets_do_not_shrink_the_global_limit(start_router) -> None:
    """ATP-ERR-005: a client cancelling its own streams is not an adapter failure."""
    router = await start_router(adapters={"slow": "builtin:persona?latency_ms=50&chunks=20"})
    before = router.admission.limit
    async with connect(ws_url(router)) as client:
        for _ in range(30):
            async with client.stream("hi") as st:
                async for _ in st:
                    break  # leaving sends RST
    await trio.sleep(0.2)
    assert router.admission.limit >= before
    assert router.admission.in_flight == 0


async def test_stalled_reader_releases_its_slot(start_router) -> None:
    """ATP-FLOW-006: a client that grants no credit ends with ETIMEOUT after write_stall_s
    and frees its admission slot for others."""
    router = await start_router(
        adapters={"firehose": "builtin:echo?chunks=5000"}, write_stall_s=0.5
    )
    conn = Connection(Role.CLIENT, limits=Limits(initial_window=4096), now=0.0)
    conn.send_capabilities()
    conn.open_stream(cbor2.dumps({"content": {"prompt": "x" * 20_000}}), now=None)
    async with trio_websocket.open_websocket_url(ws_url(router)) as ws:
        for m in conn.data_to_send():
            await ws.send_message(m)
        with trio.fail_after(5):
            while router.admission.in_flight == 0:
                await trio.sleep(0.02)
            while router.admission.in_flight:
                await trio.sleep(0.05)
    assert router.metrics.errors.get("ETIMEOUT") >= 1


async def test_duplicate_adapter_names_call_once(start_router) -> None:
    """One SYN cannot multiply adapter calls by repeating a name in meta.adapters."""
    router = await start_router(adapters={"p": "builtin:persona?fail=error"})
    async with connect(ws_url(router)) as client:
        with pytest.raises(StreamError) as err:
            await client.ask("hi", meta={"adapters": ["p"] * 200})
    assert err.value.code == "EAGENTDOWN"
    assert router.adapters["p"].calls == 1


async def test_adapter_error_text_is_not_sent_to_clients(start_router) -> None:
    """ATP-ERR-006: the client gets codes, not an adapter's own message (which may quote
    an upstream response, credentials included)."""
    router = await start_router(adapters={"p": "builtin:persona?fail=error"})
    async with connect(ws_url(router)) as client:
        with pytest.raises(StreamError) as err:
            await client.ask("hi")
    assert "configured to fail" not in err.value.message
    assert "EAGENTDOWN" in err.value.message


async def test_client_streams_do_not_block_each_other(start_router) -> None:
    """An unconsumed stream must not stop the client delivering another stream."""
    router = await start_router(adapters={"e": "builtin:echo?chunks=100"})
    async with connect(ws_url(router)) as client:
        async with client.stream("a" * 400) as s1, client.stream("b" * 400) as s2:
            got = [item async for item in s2]  # s1 is left unconsumed meanwhile
            assert len(got) == 101 and got[-1].content["answer"] == "b" * 400
            first = [item async for item in s1]
            assert len(first) == 101
