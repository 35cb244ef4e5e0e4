"""The WebSocket transport's send path, as seen through the router: a first PARTIAL that
never waits on a client that does not read (the review regression). The send path's own
checks — cancelled sends keep framing, concurrent senders keep call order, close after
cancelled sends, the message size boundary — are the transport checker's
(:mod:`atp_proto.testing.transport_checker`, run over ws://, wss:// and QUIC by
tests/transports/test_transport_checker.py).
"""

from __future__ import annotations

import socket

import trio

from tests.router._helpers_e2e import (
    syn_frame as _syn,
)

from ._raw import OP_BINARY, OP_PING, _open_ws, ws_frame


async def test_first_partial_never_waits_for_a_client_that_does_not_read(
    start_router, no_handler_errors
) -> None:
    """A client floods pings and stops reading: the reader's pongs hold the send slot and
    the socket fills. The stream's first PARTIAL must not make the stream task wait on
    the socket (flush_now used to, until call_timeout_s, and the stall was booked as an
    adapter ETIMEOUT): the stream ends by write_stall_s, and the adapter is not blamed."""
    router = await start_router(
        adapters={"persona": "builtin:persona?latency_ms=300"},
        write_stall_s=1.0,
        call_timeout_s=20.0,
    )
    client = await _open_ws(router)
    client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    syn = _syn(1, ttl=0)  # no TTL: only write_stall_s may end the stream
    await client.stream.send_all(ws_frame(OP_BINARY, syn))
    ping = ws_frame(OP_PING, b"p" * 125) * 64
    while True:  # until the router stops reading: its pongs cannot leave
        with trio.move_on_after(0.5) as scope:
            await client.stream.send_all(ping)
        if scope.cancelled_caught:
            break
    t0 = trio.current_time()
    with trio.fail_after(15):
        while router.metrics.streams_active.get("gold"):
            await trio.sleep(0.1)
    waited = trio.current_time() - t0
    text = router.metrics.render()
    assert waited < 6, f"the stream task was held {waited:.1f} s (write_stall_s is 1 s)"
    assert (
        'outcome="ETIMEOUT"'
        not in text.split("atp_adapter_calls_total", 1)[-1].split("# HELP", 1)[0]
    ), "a client that does not read was booked as an adapter timeout"
    assert router.admission.in_flight == 0
    await client.aclose()
