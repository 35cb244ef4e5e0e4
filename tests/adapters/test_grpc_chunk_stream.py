"""GrpcAdapter.stream's iterator (ChunkStream): ``ready()`` says whether the next chunk is
already received, ResilientAdapter takes such chunks without opening a timer (one cancel
scope less per chunk on the router's hot path), and a stream left without ``aclose`` is
still reset at once (no reference cycle keeps it alive until a garbage collection).

Real adapter processes over loopback: the persona adapter and the independent grpcio
server of tests/adapters/grpcio_server.py.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import grpcio_server, serve_adapter

from atp_proto.adapters import AdapterError, TaskRequest
from atp_proto.adapters.grpc import GrpcAdapter
from atp_proto.adapters.grpc.client import ChunkStream
from atp_proto.adapters.resilience import ResilientAdapter
from atp_proto.frames import ErrorCode

REQ = TaskRequest("t", "The quick brown fox jumps over the lazy dog.")
PERSONA = ("persona", "--option", "latency_ms=0", "--option", "chunks=4")


async def _arrived(stream: ChunkStream) -> None:
    """Wait until the rest of the answer is in (loopback: well within a second)."""
    with trio.move_on_after(2):
        while not stream.ready():
            await trio.sleep(0.01)


async def test_ready_says_whether_the_next_chunk_is_already_here(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_adapter(tmp_path, *PERSONA) as proc:
            async with GrpcAdapter.from_url("p", proc.url) as a:
                stream = a.stream(REQ)
                assert isinstance(stream, ChunkStream)
                assert not stream.ready()  # no call open yet
                first = await stream.__anext__()
                await _arrived(stream)
                assert stream.ready()
                rest = []
                while stream.ready():  # every chunk left is taken without waiting
                    try:
                        rest.append(await stream.__anext__())
                    except StopAsyncIteration:
                        break
                chunks = [first, *rest]
                assert len(chunks) >= 4 and chunks[-1].final
                assert not stream.ready()  # over: no call any more
                await stream.aclose()


async def test_a_stalled_stream_is_not_ready_and_still_times_out(tmp_path: Path) -> None:
    args = ("persona", "--option", "latency_ms=0", "--option", "fail=stall")
    with trio.fail_after(30):
        async with serve_adapter(tmp_path, *args, "--option", "fail_after=2") as proc:
            async with GrpcAdapter.from_url("p", proc.url) as a:
                stream = a.stream(REQ)
                await stream.__anext__()
                await stream.__anext__()
                await trio.sleep(0.3)  # whatever the adapter sends has arrived: nothing
                assert not stream.ready()
                await stream.aclose()
                # behind ResilientAdapter the wait for the third chunk is bounded
                r = ResilientAdapter(a, idle_timeout=0.3, max_retries=0)
                n = 0
                with pytest.raises(AdapterError) as ei:
                    async for _ in r.stream(REQ):
                        n += 1
                assert n == 2 and ei.value.code == ErrorCode.ETIMEOUT and ei.value.streamed


@contextmanager
def _timers_opened_by(module_file: str) -> Iterator[list[float]]:
    """Record the deadline of every ``trio.move_on_at`` called from ``module_file``."""
    real = trio.move_on_at
    opened: list[float] = []

    def spy(deadline: float, **kwargs: Any) -> trio.CancelScope:
        if sys._getframe(1).f_code.co_filename == module_file:
            opened.append(deadline)
        return real(deadline, **kwargs)

    trio.move_on_at = spy  # type: ignore[assignment]
    try:
        yield opened
    finally:
        trio.move_on_at = real


async def test_resilient_adapter_opens_no_timer_for_a_chunk_already_here(tmp_path: Path) -> None:
    from atp_proto.adapters import resilience

    with trio.fail_after(30):
        async with serve_adapter(tmp_path, *PERSONA) as proc:
            async with GrpcAdapter.from_url("p", proc.url) as a:
                r = ResilientAdapter(a, idle_timeout=5.0)
                with _timers_opened_by(resilience.__file__) as opened:
                    n = 0
                    async with aclosing(r.stream(REQ)) as chunks:
                        async for chunk in chunks:
                            n += 1
                            if n == 1:
                                # let the rest of the answer arrive: every later one is here
                                await trio.sleep(0.3)
                            if chunk.final:
                                break
                assert n >= 4
                # the first chunk's wait only (before: one timer per chunk)
                assert len(opened) == 1, opened
                assert r.stats.idle_timeouts == 0 and r.in_flight == 0


async def test_a_stream_left_without_aclose_is_reset_at_once(tmp_path: Path) -> None:
    """``break`` out of ``async for`` and drop the iterator, with the garbage collector
    off: the call must still be reset (RST_STREAM) by reference counting alone."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with trio.fail_after(30):
            async with grpcio_server(tmp_path) as srv, GrpcAdapter.from_url("g", srv.url) as a:
                n = 0
                async for _ in a.stream(TaskRequest("t", "flood:20000")):
                    n += 1
                    if n == 3:
                        break
                stats = None
                for _ in range(100):
                    stats = await a.estimate(TaskRequest("t", "stats"))
                    if stats.usd_micros:
                        break
                    await trio.sleep(0.05)
                assert stats is not None and stats.usd_micros == 1  # the server saw the cancel
    finally:
        if enabled:
            gc.enable()


async def test_a_call_that_can_start_at_once_opens_no_timer(tmp_path: Path) -> None:
    """A stream call on a connected channel with a free slot and room in the server's
    windows starts without a timer; one that would wait (a request larger than the
    window) is bounded by one as before."""
    from atp_proto.adapters.grpc import client

    with trio.fail_after(30):
        async with serve_adapter(tmp_path, *PERSONA) as proc:
            async with GrpcAdapter.from_url("p", proc.url) as a:
                with _timers_opened_by(client.__file__) as opened:
                    first = [c async for c in a.stream(REQ)]  # connects: bounded
                    assert len(opened) == 1
                    conn = a._conn
                    assert conn is not None
                    assert conn.starts_now(len(REQ.prompt))
                    window = conn.h2.outbound_flow_control_window
                    assert not conn.starts_now(window)  # would wait for credit
                    second = [c async for c in a.stream(REQ)]
                    assert len(opened) == 1  # no timer for the second call's start
                assert [c.content for c in second] == [c.content for c in first]


@contextmanager
def _scopes_opened_by(module_file: str) -> Iterator[list[dict[str, Any]]]:
    """Record every ``trio.CancelScope(...)`` made from ``module_file`` (its arguments)."""
    real = trio.CancelScope
    opened: list[dict[str, Any]] = []

    def spy(**kwargs: Any) -> trio.CancelScope:
        if sys._getframe(1).f_code.co_filename == module_file:
            opened.append(kwargs)
        return real(**kwargs)

    trio.CancelScope = spy  # type: ignore[assignment,misc]
    try:
        yield opened
    finally:
        trio.CancelScope = real  # type: ignore[misc]


async def test_chunk_stream_aclose_never_checkpoints(tmp_path: Path) -> None:
    """What ``aclose_checkpoints = False`` claims, in every state a caller closes it in:
    before the first chunk, after one, after the last, after a failed call, and with
    the caller's scope cancelled (nothing to shield: no cancel can reach it)."""
    assert ChunkStream.aclose_checkpoints is False
    fail = ("persona", "--option", "latency_ms=0", "--option", "fail=error")
    with trio.fail_after(30):
        async with serve_adapter(tmp_path, *PERSONA) as proc:
            async with GrpcAdapter.from_url("p", proc.url) as a:
                for take in (0, 1, 2, 99):
                    stream = a.stream(REQ)
                    got = []
                    while len(got) < take:
                        try:
                            got.append(await stream.__anext__())
                        except StopAsyncIteration:
                            break
                    with trio.CancelScope() as cs:
                        cs.cancel()
                        with trio.testing.assert_no_checkpoints():
                            await stream.aclose()
                    assert not cs.cancelled_caught
                    assert take == 0 or got
                assert a._conn is not None and not a._conn.calls  # every call closed
        async with serve_adapter(tmp_path, *fail) as proc:
            async with GrpcAdapter.from_url("p", proc.url) as a:
                stream = a.stream(REQ)
                with pytest.raises(AdapterError):
                    while True:
                        await stream.__anext__()
                with trio.testing.assert_no_checkpoints():
                    await stream.aclose()


async def test_resilient_stream_closes_a_chunk_stream_without_a_scope(tmp_path: Path) -> None:
    """Around a ChunkStream, ResilientAdapter opens no scope but its waits' timers (one
    per stream when the later chunks are already here): the inner stream is closed
    without a shield (before: one more scope per stream)."""
    from atp_proto.adapters import resilience

    with trio.fail_after(30):
        async with serve_adapter(tmp_path, *PERSONA) as proc:
            async with GrpcAdapter.from_url("p", proc.url) as a:
                r = ResilientAdapter(a, idle_timeout=5.0)
                with (
                    _timers_opened_by(resilience.__file__) as timers,
                    _scopes_opened_by(resilience.__file__) as scopes,
                ):
                    async with aclosing(r.stream(REQ)) as chunks:
                        async for chunk in chunks:
                            if chunk.final:
                                break
                # the waits' timers (the first chunk's at least; later ones only when a
                # chunk is not here yet: the test above), and no other scope
                assert timers and scopes == []
                assert r.in_flight == 0 and r.stats.calls == 1


async def test_a_cancelled_resilient_stream_still_resets_its_call(tmp_path: Path) -> None:
    """The caller's scope cancelled mid-stream: the unshielded close of the ChunkStream
    still runs to its end (the server sees the cancel) and the slot is given back."""
    with trio.fail_after(30):
        async with grpcio_server(tmp_path) as srv, GrpcAdapter.from_url("g", srv.url) as a:
            r = ResilientAdapter(a, idle_timeout=5.0)
            n = 0
            with trio.CancelScope() as cs:
                async with aclosing(r.stream(TaskRequest("t", "flood:20000"))) as chunks:
                    async for _ in chunks:
                        n += 1
                        if n == 3:
                            cs.cancel()
                            await trio.sleep(1)  # cancelled here: closed inside the scope
            assert cs.cancelled_caught and n == 3
            assert r.in_flight == 0 and a._conn is not None and not a._conn.calls
            stats = None
            for _ in range(100):
                stats = await a.estimate(TaskRequest("t", "stats"))
                if stats.usd_micros:
                    break
                await trio.sleep(0.05)
            assert stats is not None and stats.usd_micros == 1  # the server saw the cancel
