"""The SDK server's write coalescing (``grpc_server.CoalescingTransport``).

Unit tests drive the wrapper under asyncio with a fake transport that records what it is
given; the last test serves a reference adapter through the real grpclib server (which
uses the wrapper) and reads it with grpclib's client over loopback TCP. The suite runs
async tests under trio, so these are sync tests that call ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from atp_proto.adapters import Chunk, TaskRequest
from atp_proto.adapters.builtin import ASYNCIO, behaviour_adapter
from atp_proto.adapters.grpc import server as grpc_server
from atp_proto.adapters.grpc.server import CoalescingTransport, RawCodec
from atp_proto.adapters.grpc.status import method_path
from atp_proto.adapters.proto import codec
from atp_proto.adapters.sdk import AdapterServer

STREAM = method_path("Stream")


class FakeTransport:
    """Records the calls the wrapper makes, in order."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, bytes]] = []
        self.closing = False

    @property
    def writes(self) -> list[bytes]:
        return [data for op, data in self.ops if op == "write"]

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.ops.append(("write", bytes(data)))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.ops.append(("close", b""))

    def abort(self) -> None:
        self.closing = True
        self.ops.append(("abort", b""))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.1.2.3", 4567), "socket": None}.get(name, default)


def run(test: Callable[[CoalescingTransport, FakeTransport], Awaitable[None]]) -> None:
    async def main() -> None:
        fake = FakeTransport()
        wrapper = CoalescingTransport(fake)  # type: ignore[arg-type]
        await test(wrapper, fake)

    asyncio.run(main())


async def next_iteration() -> None:
    """Let the event loop run the callbacks scheduled so far (one iteration)."""
    await asyncio.sleep(0)


def test_writes_of_one_iteration_leave_in_one_write_in_order() -> None:
    async def test(t: CoalescingTransport, fake: FakeTransport) -> None:
        t.write(b"one ")
        t.write(b"two ")
        t.write(b"three")
        assert fake.writes == []  # held until the end of the iteration
        await next_iteration()
        assert fake.writes == [b"one two three"]
        t.write(b"four")
        t.write(b"five")
        await next_iteration()
        assert fake.writes == [b"one two three", b"fourfive"]
        await next_iteration()
        assert fake.writes == [b"one two three", b"fourfive"]  # nothing more, no empty write

    run(test)


def test_a_single_write_is_passed_on_unchanged() -> None:
    async def test(t: CoalescingTransport, fake: FakeTransport) -> None:
        t.write(b"alone")
        await next_iteration()
        assert fake.writes == [b"alone"]

    run(test)


def test_limit_flushes_at_once() -> None:
    async def test(t: CoalescingTransport, fake: FakeTransport) -> None:
        assert t.limit == 4096
        t.write(b"a" * 4000)
        t.write(b"b" * 95)  # 4095 bytes: still held
        assert fake.writes == []
        t.write(b"c")  # 4096: sent now, without waiting for the loop
        assert fake.writes == [b"a" * 4000 + b"b" * 95 + b"c"]
        t.write(b"d" * 5000)  # one write above the limit leaves at once too
        assert fake.writes[1:] == [b"d" * 5000]
        t.write(b"tail")
        await next_iteration()
        # the callback scheduled by the first write sends only what came after the flushes
        assert fake.writes == [b"a" * 4000 + b"b" * 95 + b"c", b"d" * 5000, b"tail"]
        await next_iteration()
        assert len(fake.writes) == 3

    run(test)


def test_empty_writes_are_ignored() -> None:
    async def test(t: CoalescingTransport, fake: FakeTransport) -> None:
        t.write(b"")
        await next_iteration()
        assert fake.ops == []
        t.write(b"x")
        t.write(b"")
        t.write(b"y")
        await next_iteration()
        assert fake.writes == [b"xy"]
        t.flush()  # nothing buffered: no write
        assert fake.writes == [b"xy"]

    run(test)


def test_close_flushes_then_closes() -> None:
    async def test(t: CoalescingTransport, fake: FakeTransport) -> None:
        t.write(b"last ")
        t.write(b"words")
        t.close()
        assert fake.ops == [("write", b"last words"), ("close", b"")]
        await next_iteration()  # the scheduled flush finds nothing to send
        assert fake.ops == [("write", b"last words"), ("close", b"")]

    run(test)


def test_nothing_is_written_once_the_transport_is_closing() -> None:
    async def test(t: CoalescingTransport, fake: FakeTransport) -> None:
        t.write(b"early")
        await next_iteration()
        t.write(b"lost")
        fake.closing = True  # e.g. the peer reset the connection meanwhile
        await next_iteration()
        t.write(b"x" * 5000)  # the immediate flush path checks too
        t.close()
        t.write(b"after close")
        await next_iteration()
        assert fake.ops == [("write", b"early"), ("close", b"")]
        assert t.is_closing() is True  # delegated

    run(test)


def test_other_attributes_are_delegated() -> None:
    async def test(t: CoalescingTransport, fake: FakeTransport) -> None:
        assert t.get_extra_info("peername") == ("10.1.2.3", 4567)
        assert t.get_extra_info("nope", "dflt") == "dflt"
        assert t.transport is cast(Any, fake)
        assert t.is_closing() is False
        t.abort()
        assert fake.ops == [("abort", b"")]
        assert t.is_closing() is True
        with pytest.raises(AttributeError):
            t.no_such_method()

    run(test)


def test_grpclib_client_reads_a_coalescing_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """50 chunks from the echo reference adapter through the SDK's real server."""
    joined: list[int] = []  # writes per underlying write, for every flush that sent data
    original_flush = CoalescingTransport.flush

    def counting_flush(self: CoalescingTransport) -> None:
        if self._buf and not self.transport.is_closing():
            joined.append(len(self._buf))
        original_flush(self)

    monkeypatch.setattr(grpc_server.CoalescingTransport, "flush", counting_flush)
    prompt = "".join(chr(65 + i % 26) for i in range(150))  # 50 parts of 3 characters
    req = TaskRequest("echo", prompt, request_id="sdk-1")

    async def main() -> tuple[list[Chunk], list[Chunk]]:
        expected = [
            c async for c in behaviour_adapter("echo", {"chunks": "50"}, waits=ASYNCIO).stream(req)
        ]
        server = AdapterServer(
            behaviour_adapter("echo", {"chunks": "50"}, waits=ASYNCIO), grace=1.0
        )
        port = await server.start("127.0.0.1", 0)
        channel = Channel("127.0.0.1", port, codec=RawCodec())
        try:
            async with asyncio.timeout(10):
                got = []
                async with channel.request(STREAM, Cardinality.UNARY_STREAM, bytes, bytes) as s:
                    await s.send_message(codec.encode_task_request(req), end=True)
                    async for msg in s:
                        got.append(codec.decode_chunk(msg))  # noqa: PERF401
        finally:
            channel.close()
            await server.drain()
        return expected, got

    expected, got = asyncio.run(main())
    assert len(expected) == 50
    assert got == expected
    assert "".join(c.content for c in got) == prompt
    assert got[-1].final and got[-1].finish_reason == "stop"
    assert not any(c.final for c in got[:-1])
    # the server's frames did go through the wrapper, and some writes were joined
    assert joined and max(joined) > 1, joined
