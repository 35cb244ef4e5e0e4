"""A session that ends under running streams is a normal event, not a failure
(atp_proto/session/session.py): the stream tasks end quietly, and only a real failure of
a stream task is logged at ERROR with its traceback.

The defect: over QUIC (a per-stream transport), a stream sending its first PARTIAL after
the connection had gone called ``flush_now``, whose ``try_send_streams`` raised
``TransportClosed``; the stream task took it for a routing bug and logged "stream task
failed" with a traceback at ERROR, then tried to send EINTERNAL on the dead session.

Sans sockets: a per-stream in-memory transport whose peer is a client-role core.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
import trio

from atp_proto.frames import Connection, ErrorCode, Limits, QoS, Role, StreamOpened, StreamReset
from atp_proto.session import Output, Session, SessionInfo
from atp_proto.transports import TransportClosed
from atp_proto.transports.base import ChannelData


@dataclass
class PerStreamMemory:
    """A per-stream transport (as QUIC's) over an in-memory channel; ``gone`` makes every
    send raise TransportClosed, as QUIC's does once the connection terminated."""

    inbox: trio.MemorySendChannel[ChannelData]
    _recv: trio.MemoryReceiveChannel[ChannelData]
    per_stream: bool = True
    pending_bytes: int = 0
    on_writable: object = None
    gone: bool = False
    sent: list[tuple[int, bytes, bool]] = field(default_factory=list)

    @classmethod
    def make(cls) -> PerStreamMemory:
        send, recv = trio.open_memory_channel[ChannelData](100)
        return cls(send, recv)

    async def receive(self) -> ChannelData:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed from None

    def try_send_streams(self, items: list[tuple[int, bytes, bool]]) -> bool:
        if self.gone:
            raise TransportClosed
        self.sent += items
        return True

    async def send_streams(self, items: list[tuple[int, bytes, bool]]) -> None:
        self.try_send_streams(items)

    async def send(self, data: bytes | str) -> None:
        raise AssertionError("a per-stream transport is written per stream")

    def try_send(self, data: bytes | str) -> bool:
        return False

    async def flush(self) -> None:
        if self.gone:
            raise TransportClosed

    async def close_with_error(self, code: object, reason: str) -> None:
        self._recv.close()

    async def aclose(self) -> None:
        self._recv.close()


async def _open_one(peer: Connection, transport: PerStreamMemory) -> int:
    """The client peer opens one stream and its frames go in through the transport."""
    sid = peer.open_stream(b"\xa0", qos=QoS.GOLD, now=trio.current_time())
    for s, data, _ in peer.stream_data_to_send(trio.current_time()):
        await transport.inbox.send(ChannelData(s, data))
    return sid


@pytest.mark.parametrize("first_output", ["partial", "final"])
async def test_the_transport_gone_under_a_stream_is_not_a_stream_failure(
    first_output: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = PerStreamMemory.make()
    started, ended = trio.Event(), trio.Event()
    raised: list[BaseException] = []

    async def runner(info: SessionInfo, ev: StreamOpened, output: Output) -> None:
        started.set()
        await trio.sleep(0.05)  # the adapter's first chunk comes after the peer left
        try:
            if first_output == "partial":
                output.send_partial(b"\xa0")  # the first PARTIAL: flush_now, at once
            else:
                output.send_final(b"\xa0")
        except BaseException as exc:  # pragma: no cover - what the defect did
            raised.append(exc)
            raise
        finally:
            ended.set()

    session = Session(transport, limits=Limits(), session_id="s1", principal="p", run_stream=runner)
    peer = Connection(Role.CLIENT, now=trio.current_time())
    with caplog.at_level(logging.DEBUG, logger="atp"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await _open_one(peer, transport)
            with trio.fail_after(5):
                await started.wait()
            transport.gone = True  # the QUIC connection terminated
            with trio.fail_after(5):
                await ended.wait()
                await trio.sleep(0.05)
            assert raised == []  # the send did not blow up in the stream's face
            await transport.aclose()
            with trio.fail_after(5):
                await session.done.wait()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert not any(r.exc_info for r in caplog.records)


async def test_a_real_failure_still_logs_its_traceback_and_ends_the_stream_einternal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other side of the line: a bug in the runner is an ERROR with its traceback, and
    the client is told EINTERNAL (the session lives on)."""
    transport = PerStreamMemory.make()

    async def runner(info: SessionInfo, ev: StreamOpened, output: Output) -> None:
        raise KeyError("a routing bug")

    session = Session(transport, limits=Limits(), session_id="s1", principal="p", run_stream=runner)
    peer = Connection(Role.CLIENT, now=trio.current_time())
    with caplog.at_level(logging.DEBUG, logger="atp"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            sid = await _open_one(peer, transport)
            resets: list[StreamReset] = []
            with trio.fail_after(5):
                while not resets:
                    await trio.sleep(0.01)
                    sent, transport.sent = transport.sent, []
                    for s, data, _ in sent:
                        evs = peer.receive_stream_data(s, data, trio.current_time())
                        resets += [e for e in evs if isinstance(e, StreamReset)]
            assert resets[0].stream_id == sid and resets[0].code == ErrorCode.EINTERNAL
            assert not session.done.is_set()
            await transport.aclose()
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "stream task failed" and record.exc_info is not None
    assert record.exc_info[0] is KeyError


async def test_a_connection_error_under_a_sending_stream_is_not_a_stream_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The peer's malformed frame closes the core (a connection error) while a stream is
    about to send: its send raises LocalProtocolError ("the connection is closed"), which
    is the session ending, not a routing bug (seen in CI as a "stream task failed"
    traceback at ERROR in test_e2e_independent_clients)."""
    transport = PerStreamMemory.make()
    sent_after_close: list[BaseException] = []
    session: Session | None = None

    async def runner(info: SessionInfo, ev: StreamOpened, output: Output) -> None:
        assert session is not None
        with trio.CancelScope(shield=True):  # the adapter's chunk is already on its way
            while not session.conn.closed:
                await trio.sleep(0.01)
        try:
            output.send_partial(b"\xa0")
        except BaseException as exc:
            sent_after_close.append(exc)
            raise

    session = Session(transport, limits=Limits(), session_id="s1", principal="p", run_stream=runner)
    peer = Connection(Role.CLIENT, now=trio.current_time())
    with caplog.at_level(logging.DEBUG, logger="atp"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await _open_one(peer, transport)
            await trio.sleep(0.05)
            await transport.inbox.send(ChannelData(0, b"\xff" * 24))  # no ATP frame
            with trio.fail_after(5):
                await session.done.wait()
    assert sent_after_close and session.conn.closed  # the race this test is about
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert not any(r.exc_info for r in caplog.records)
