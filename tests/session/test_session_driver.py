"""The session driver on its own: an in-memory transport, a raw client-role core as the
peer. Checks the seams the roles use: the runner gets a :class:`SessionInfo` and an
:class:`Output` (StreamOutput), ``on_window`` hears a WINDOW_UPDATE's
budget window, the authentication hook (the first CAPABILITIES; no SYN before it), and
that the session closes the transport through ``close_with_error`` (the transport picks
the binding's close code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from atp_proto.frames import (
    ATPError,
    BudgetWindow,
    CapabilitiesReceived,
    Connection,
    ErrorCode,
    Event,
    Limits,
    MessageReceived,
    QoS,
    Role,
    StreamOpened,
)
from atp_proto.session import Output, Session, SessionInfo, StreamOutput
from atp_proto.transports import Oversized, TransportClosed


@dataclass
class MemoryTransport:
    """A Transport over two in-process lists: what the peer core queued comes in, what
    the session sends is kept."""

    inbox: trio.MemorySendChannel[bytes]
    _recv: trio.MemoryReceiveChannel[bytes]
    sent: list[bytes | str] = field(default_factory=list)
    closed_with: tuple[str, str] | None = None
    new_output: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def make(cls) -> MemoryTransport:
        send, recv = trio.open_memory_channel[bytes](100)
        return cls(send, recv)

    async def receive(self) -> bytes | str | Oversized:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed from None

    async def send(self, data: bytes | str) -> None:
        self.sent.append(data)
        self.new_output.set()

    async def flush(self) -> None:
        pass

    def try_send(self, data: bytes | str) -> bool:
        self.sent.append(data)
        self.new_output.set()
        return True

    async def close_with_error(self, code: ErrorCode | str, reason: str) -> None:
        self.closed_with = (str(code), reason)
        self._recv.close()

    async def aclose(self) -> None:
        self._recv.close()


class Peer:
    """A client-role core whose output goes into the transport's inbox."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.conn = Connection(Role.CLIENT, now=trio.current_time())
        self.events: list[Event] = []

    async def flush(self) -> None:
        for data in self.conn.data_to_send(trio.current_time()):
            assert isinstance(data, bytes)
            await self.transport.inbox.send(data)

    async def read(self) -> None:
        """Feed what the session sent so far into the peer core."""
        sent, self.transport.sent = self.transport.sent, []
        for data in sent:
            assert isinstance(data, bytes)
            self.events += self.conn.receive_message(data, trio.current_time())

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def _until(pred: Any, peer: Peer) -> None:
    with trio.fail_after(3):
        while True:
            await peer.read()
            if pred():
                return
            peer.transport.new_output = trio.Event()
            with trio.move_on_after(0.05):
                await peer.transport.new_output.wait()


async def test_runner_gets_info_and_a_stream_output(nursery: trio.Nursery) -> None:
    transport = MemoryTransport.make()
    seen: list[tuple[SessionInfo, StreamOpened, Output]] = []
    windows: list[BudgetWindow] = []
    got_window = trio.Event()

    async def runner(info: SessionInfo, ev: StreamOpened, output: Output) -> None:
        typed: StreamOutput = output  # the session's Output is a StreamOutput
        seen.append((info, ev, output))
        typed.set_lane(QoS.BRONZE)
        typed.on_window = lambda w: (windows.append(w), got_window.set())
        assert typed.can_write()
        typed.send_partial(b"\xa0", ext={"n": 1})  # CBOR {}
        await got_window.wait()
        await typed.writable()
        typed.send_final(b"\xa0")

    session = Session(
        transport, limits=Limits(), session_id="s1", principal="alice", run_stream=runner
    )
    nursery.start_soon(session.run)
    peer = Peer(transport)
    sid = peer.conn.open_stream(b"\xa0", qos=QoS.GOLD, now=trio.current_time())
    await peer.flush()
    await _until(lambda: peer.of(MessageReceived), peer)
    (info, ev, output) = seen[0]
    assert info == SessionInfo("s1", "alice") and ev.stream_id == sid == output.stream_id
    assert output.lane is QoS.BRONZE  # the runner's cap, not the SYN's gold
    peer.conn.update_window(sid, BudgetWindow(max_tokens=7))
    await peer.flush()
    await _until(lambda: any(m.end_stream for m in peer.of(MessageReceived)), peer)
    assert windows == [BudgetWindow(max_tokens=7)]
    first, final = peer.of(MessageReceived)
    assert not first.end_stream and first.ext == {"n": 1} and final.end_stream


async def test_authenticate_on_first_capabilities(nursery: trio.Nursery) -> None:
    transport = MemoryTransport.make()
    asked: list[CapabilitiesReceived] = []
    principals: list[Any] = []

    def authenticate(ev: CapabilitiesReceived) -> str:
        asked.append(ev)
        return "tenant-a"

    async def runner(info: SessionInfo, ev: StreamOpened, output: Output) -> None:
        principals.append(info.principal)
        output.send_final(b"\xa0")

    session = Session(
        transport, limits=Limits(), session_id="s2", run_stream=runner, authenticate=authenticate
    )
    assert not session.authenticated
    nursery.start_soon(session.run)
    peer = Peer(transport)
    peer.conn.send_capabilities()
    peer.conn.open_stream(b"\xa0", now=trio.current_time())
    await peer.flush()
    await _until(lambda: peer.of(MessageReceived), peer)
    assert len(asked) == 1 and session.authenticated and principals == ["tenant-a"]


@pytest.mark.parametrize("failure", ["syn_first", "refused"])
async def test_authentication_failures_close_the_session(failure: str) -> None:
    """A SYN before the CAPABILITIES is EPROTO; a refused credential closes with the
    code the hook raised (ESEC). The transport is closed with that ErrorCode."""
    transport = MemoryTransport.make()
    started: list[int] = []

    def authenticate(ev: CapabilitiesReceived) -> str:
        raise ATPError(ErrorCode.ESEC, "bad credential")

    async def runner(info: SessionInfo, ev: StreamOpened, output: Output) -> None:
        started.append(ev.stream_id)

    session = Session(
        transport, limits=Limits(), session_id="s3", run_stream=runner, authenticate=authenticate
    )
    peer = Peer(transport)
    if failure == "refused":
        peer.conn.send_capabilities()
    peer.conn.open_stream(b"\xa0", now=trio.current_time())
    await peer.flush()
    with trio.fail_after(3):
        await session.run()
    expected = ErrorCode.EPROTO if failure == "syn_first" else ErrorCode.ESEC
    assert transport.closed_with is not None and transport.closed_with[0] == expected
    assert started == []
