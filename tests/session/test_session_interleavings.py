"""The router's session driver under random conversations (session 6): a client core and a
hostile peer's frames on one in-memory transport, stream tasks that answer with PARTIALs,
FINALs, ERRORs or hang, time advancing through TTLs and heartbeats (trio's MockClock).

What must hold whatever comes in (atp_proto/testing/interleavings.py's checks of the
output and the core's state, at every step): nothing escapes ``Session.run``; no stream
task fails ("stream task failed" is logged at ERROR: a bug); the stream tasks alive stay
within max_streams; a stream ends once; the session closes, if it does, with a spec code;
and once the peer leaves every stream task has ended.
"""

from __future__ import annotations

import logging
import random

import cbor2
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from atp_proto.frames import (
    Connection,
    ErrorCode,
    FrameDecoder,
    Limits,
    LocalProtocolError,
    MessageReceived,
    Role,
    StreamOpened,
)
from atp_proto.session import Output, Session, SessionInfo
from atp_proto.testing.interleavings import BIG_LIMITS, CODES, Side, hostile
from tests.frames.helpers import CI

from .test_session_driver import MemoryTransport

_TASK = cbor2.dumps({"type": "agent.task", "content": {"prompt": "hi"}})


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _conversation(rnd: random.Random) -> None:
    transport = MemoryTransport.make()
    small = rnd.random() < 0.5
    limits = Limits(initial_window=2048, max_streams=3) if small else Limits(max_streams=6)
    live: set[int] = set()

    async def runner(info: SessionInfo, ev: StreamOpened, out: Output) -> None:
        r = random.Random(rnd.random())
        live.add(ev.stream_id)
        try:
            for _ in range(r.randint(0, 4)):
                await out.writable()
                out.send_partial(r.randbytes(r.choice([1, 100, 3000])))
                await trio.sleep(r.choice([0, 0.01, 0.5]))
            end = r.random()
            await out.writable()
            if end < 0.6:
                out.send_final(r.randbytes(r.choice([0, 10, 5000])), ext={"telemetry": {}})
            elif end < 0.8:
                out.send_error(ErrorCode.EAGENTDOWN, "the adapter went away")
            else:
                await trio.sleep(3600)  # a stalled adapter: its TTL or the peer ends it
        finally:
            live.discard(ev.stream_id)

    session = Session(transport, limits=limits, session_id="fuzz", run_stream=runner)
    side = Side(session.conn)
    client = Connection(Role.CLIENT, now=trio.current_time())
    if rnd.random() < 0.8:
        client.send_capabilities()
    mine: list[int] = []

    async def flush_client() -> None:
        for data in client.data_to_send(trio.current_time()):
            assert isinstance(data, bytes)
            await transport.inbox.send(data)

    def read_session() -> None:
        sent, transport.sent = transport.sent, []
        for data in sent:
            assert isinstance(data, bytes)
            dec = FrameDecoder(BIG_LIMITS)
            dec.feed(data)
            side.check_output(list(dec))
            for ev in client.receive_message(data, trio.current_time()):
                if isinstance(ev, MessageReceived) and rnd.random() < 0.8:
                    client.acknowledge(ev.stream_id, ev.size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        for _ in range(rnd.randint(3, 40)):
            action = rnd.random()
            try:
                if action < 0.25:
                    mine.append(
                        client.open_stream(
                            _TASK, ttl=rnd.choice([0, 0, 1, 5]), now=trio.current_time()
                        )
                    )
                elif action < 0.35 and mine:
                    client.send_message(rnd.choice(mine), b"", end_stream=True)
                elif action < 0.42 and mine:
                    client.reset_stream(rnd.choice(mine))
            except LocalProtocolError:
                pass  # a local refusal (the stream ended, max_streams): the client's own
            await flush_client()
            if 0.42 <= action < 0.65:
                known = sorted({*mine, *session.streams})
                await transport.inbox.send(hostile(rnd, known))
            await trio.sleep(rnd.choice([0, 0.001, 0.1, 2.0]))
            read_session()
            side.check_state()
            assert len(live) <= limits.max_streams
            if session.done.is_set():
                break
        await transport.aclose()  # the peer leaves
        with trio.fail_after(30):
            await session.done.wait()
    read_session()
    assert not live and not session.streams  # every stream task ended with the session
    if transport.closed_with is not None:
        assert transport.closed_with[0] in CODES, transport.closed_with


@CI
@given(st.randoms(use_true_random=False))
def test_the_session_driver_keeps_the_invariants_under_random_conversations(
    rnd: random.Random,
) -> None:
    errors = _Errors()
    log = logging.getLogger("atp_proto")
    log.addHandler(errors)
    try:
        trio.run(_conversation, rnd, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        log.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]
