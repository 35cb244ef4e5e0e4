"""The QUIC pair of the transport checker: our server transport, aioquic's asyncio client.

The transport under test is the router's :class:`~atp_proto.transports.quic_server.
QuicServer` connection (a :class:`~atp_proto.transports._quic_conn.QuicTransport`) on a
loopback UDP port. The peer is :class:`QuicPeer`: aioquic's own asyncio API, run in a
thread with its own event loop, so the transport and the peer share no event loop and no
code on the QUIC path above aioquic's sans-IO core (the frames' headers are built by hand
with ``struct``). The peer opens the pair's channels the way a client does — the control
stream (QUIC stream 0), then one QUIC stream per ATP stream whose first bytes are a frame
header naming it — and records every stream's bytes, FINs and the connection close.

``stall()`` makes the peer drop what arrives (no acknowledgements: the sender's
``pending_bytes`` stays up); ``vanish()`` silences it for good without a
CONNECTION_CLOSE (the server learns only by its idle timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from aioquic.asyncio.client import connect
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration

from atp_proto.transports.base import ChannelData, quic_error_code
from atp_proto.transports.quic_server import QuicServer, QuicServerConfig, QuicTransport

from .quic_recorder import StallableRecorder
from .transport_checker import Binding, Pair

__all__ = [
    "QuicPeer",
    "QuicServerPeer",
    "frame_header",
    "quic_binding",
    "quic_client_binding",
    "syn_header",
]

#: the ATP streams a pair opens besides the control stream
CHANNELS = (0, 1, 3, 5)
#: the server's idle timeout in a pair: how soon a vanished peer is noticed
PAIR_IDLE_TIMEOUT = 2.5


def frame_header(atp_sid: int) -> bytes:
    """A 24-byte frame header naming ``atp_sid`` (no body): what maps a QUIC stream."""
    return struct.pack("!BBBBIIHHII", 1, 1, 0, 0, atp_sid, 0, 0, 0, 0, 0)


class _Recorder(StallableRecorder):
    """Records what arrives (:class:`StreamRecorder`); can stall or go mute."""


class QuicPeer:
    """aioquic's asyncio client in a thread, driven from trio (see the module doc)."""

    def __init__(self, port: int, cafile: str) -> None:
        self.port, self.cafile = port, cafile
        self.messages: list[bytes | str] = []  # a byte-stream binding has no messages
        self.bytes_read = 0
        self._proto: _Recorder | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._q: dict[int, int] = {0: 0}  # channel -> QUIC stream
        self._thread = threading.Thread(target=self._main, daemon=True, name="quic-peer")

    # ------------------------------------------------------------------ the thread

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to the trio side by start()
            self._failed = exc
            self._ready.set()

    async def _run(self) -> None:
        conf = QuicConfiguration(is_client=True, alpn_protocols=["atp/1"], server_name="localhost")
        conf.load_verify_locations(cafile=self.cafile)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with connect(
            "127.0.0.1", self.port, configuration=conf, create_protocol=_Recorder
        ) as proto:
            assert isinstance(proto, _Recorder)
            self._proto = proto
            self._ready.set()
            await self._stop.wait()

    def _call(self, fn: Callable[[_Recorder], None]) -> None:
        proto, loop = self._proto, self._loop
        assert proto is not None and loop is not None

        def run() -> None:
            fn(proto)
            proto.transmit()

        loop.call_soon_threadsafe(run)

    # ------------------------------------------------------------------ trio side

    async def start(self, channels: tuple[int, ...]) -> None:
        """Connect and open ``channels`` (the control stream, then one QUIC stream each)."""
        self._thread.start()
        await trio.to_thread.run_sync(self._ready.wait, abandon_on_cancel=True)
        if self._failed is not None:
            raise self._failed
        opened: dict[int, int] = {}
        done = threading.Event()

        def open_all(proto: _Recorder) -> None:
            proto._quic.send_stream_data(0, b"")
            for channel in channels:
                if channel:
                    q = proto._quic.get_next_available_stream_id()
                    opened[channel] = q
                    proto._quic.send_stream_data(q, frame_header(channel))
            done.set()

        self._call(open_all)
        await trio.to_thread.run_sync(done.wait)
        self._q.update(opened)

    async def stop(self) -> None:
        """Close the connection (normally, unless it vanished) and end the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread.ident is None:
            return  # never started
        await trio.to_thread.run_sync(self._thread.join, 10.0)
        if self._thread.is_alive():
            raise RuntimeError("the QUIC peer's thread did not end (its connection hangs)")

    @property
    def closes(self) -> list[int]:
        proto = self._proto
        return [] if proto is None or proto.close_code is None else [proto.close_code]

    @property
    def fins(self) -> set[int]:
        proto = self._proto
        assert proto is not None
        with proto.lock:
            return {c for c, q in self._q.items() if q in proto.fins}

    def received(self, channel: int) -> bytes:
        proto = self._proto
        assert proto is not None
        with proto.lock:
            return bytes(proto.data.get(self._q[channel], b""))

    async def _wait(self, done: Callable[[], bool], timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while not done():
                await trio.sleep(0.005)

    async def read_until(
        self, n_messages: int, chunk: int = 65536, delay: float = 0.0
    ) -> list[bytes | str]:
        raise NotImplementedError("a byte-stream binding has no messages")

    async def read_until_bytes(self, channel: int, n_bytes: int) -> None:
        await self._wait(lambda: len(self.received(channel)) >= n_bytes)

    async def read_for(self, seconds: float) -> None:
        await trio.sleep(seconds)  # the peer reads all the time (unless stalled)

    async def read_until_close_and_answer(self) -> None:
        await self._wait(lambda: bool(self.closes))  # aioquic answers the close itself

    async def send(self, channel: int, unit: bytes | str) -> None:
        assert isinstance(unit, bytes), "QUIC carries no text (ATP-QUIC-003)"
        q = self._q[channel]
        self._call(lambda p: p._quic.send_stream_data(q, unit))

    async def send_parts(self, channel: int, parts: list[bytes | str]) -> None:
        for part in parts:
            await self.send(channel, part)

    async def stall(self) -> None:
        assert self._proto is not None
        self._proto.stalled = True

    async def resume(self) -> None:
        assert self._proto is not None
        self._proto.stalled = False
        self._call(lambda p: None)  # transmit: acknowledge what comes next at once

    async def vanish(self) -> None:
        assert self._proto is not None
        self._proto.muted = True
        self._proto.stalled = True


async def _stop_all(peers: Sequence[QuicPeer]) -> None:
    """Stop every peer of a binding (shielded: the binding's scope is cancelled).

    Raises:
        RuntimeError: a peer's thread did not end (the first one).
    """
    hung: list[BaseException] = []
    with trio.CancelScope(shield=True):
        for peer in peers:
            try:
                await peer.stop()
            except RuntimeError as exc:
                hung.append(exc)
    if hung:
        raise hung[0]


@asynccontextmanager
async def quic_binding(cert_file: str, key_file: str) -> AsyncIterator[Binding]:
    """The checker's binding for QUIC: each pair a new connection to one loopback
    :class:`QuicServer` (stopped, with every peer, on exit)."""
    accepted_in, accepted_out = trio.open_memory_channel[QuicTransport](16)
    peers: list[QuicPeer] = []

    async def handler(transport: QuicTransport) -> None:
        await accepted_in.send(transport)
        await trio.sleep_forever()  # the pair's transport lives until the server stops

    cfg = QuicServerConfig(cert_file=cert_file, key_file=key_file, idle_timeout=PAIR_IDLE_TIMEOUT)
    server = QuicServer(cfg, handler)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)

        async def make(max_unit: int | None = None) -> Pair:
            peer = QuicPeer(port, cert_file)
            peers.append(peer)
            await peer.start(CHANNELS)
            with trio.fail_after(10):
                transport = await accepted_out.receive()
                seen: set[int] = set()
                while seen != set(CHANNELS) - {0}:  # the headers that mapped the streams
                    item = await transport.receive()
                    assert isinstance(item, ChannelData)
                    seen.add(item.channel)
            return Pair(transport, peer, quic_error_code, channels=CHANNELS, max_unit=max_unit)

        try:
            yield Binding("quic", make, per_stream=True)
        finally:
            nursery.cancel_scope.cancel()  # the server goes once every peer has stopped
            await _stop_all(peers)


# ---------------------------------------------------------------------- the client end


class QuicServerPeer(QuicPeer):
    """The far end of our *client's* QUIC transport: aioquic's asyncio server in a
    thread (the same recorder, stall and vanish as :class:`QuicPeer`). The client opens
    every QUIC stream (ATP-QUIC-002), each with its stream's SYN; the peer learns the
    channel from that first frame's header and reports only what follows it."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        super().__init__(0, cert_file)
        self.key_file = key_file

    async def _run(self) -> None:
        conf = QuicConfiguration(
            is_client=False, alpn_protocols=["atp/1"], idle_timeout=PAIR_IDLE_TIMEOUT
        )
        conf.load_cert_chain(self.cafile, self.key_file)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        def accept(*args: Any, **kwargs: Any) -> _Recorder:
            self._proto = _Recorder(*args, **kwargs)  # one client per peer
            return self._proto

        server = await serve("127.0.0.1", 0, configuration=conf, create_protocol=accept)
        try:
            assert server._transport is not None
            self.port = int(server._transport.get_extra_info("sockname")[1])
            self._ready.set()
            await self._stop.wait()
        finally:
            server.close()

    async def listen(self) -> int:
        """Start the server; its UDP port."""
        self._thread.start()
        await trio.to_thread.run_sync(self._ready.wait, abandon_on_cancel=True)
        if self._failed is not None:
            raise self._failed
        return self.port

    def _streams(self) -> dict[int, int]:
        """channel -> QUIC stream, from each client stream's first frame header."""
        proto = self._proto
        if proto is None:
            return {}
        with proto.lock:
            return {
                struct.unpack_from("!I", data, 4)[0]: q
                for q, data in proto.data.items()
                if q and len(data) >= HEADER_SIZE
            }

    async def opened(self, channels: tuple[int, ...]) -> None:
        """Wait until the client's streams for ``channels`` have said which they are."""
        want = set(channels) - {0}
        await self._wait(lambda: want <= set(self._streams()))
        self._q.update({c: q for c, q in self._streams().items() if c in want})

    def received(self, channel: int) -> bytes:
        data = super().received(channel)
        return data[HEADER_SIZE:] if channel else data


def syn_header(atp_sid: int) -> bytes:
    """A 24-byte SYN header (no body) for ``atp_sid``: what makes our client open a QUIC
    stream for it (the client opens one only for a SYN)."""
    return struct.pack("!BBBBIIHHII", 1, 0, _F_SYN, 0, atp_sid, 0, 0, 0, 0, 0)


_F_SYN = 0x01
HEADER_SIZE = 24


@asynccontextmanager
async def quic_client_binding(cert_file: str, key_file: str) -> AsyncIterator[Binding]:
    """The checker's binding for our QUIC *client* end (``connect_quic``): each pair a
    new connection to its own aioquic server peer. The client ends its side of a stream
    when the router's FIN has arrived, not with its own last item (ATP-QUIC-012), so its
    pairs say ``fin_on_end=False``."""
    from atp_proto.transports.quic_client import connect_quic

    peers: list[QuicServerPeer] = []

    async def client(port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with connect_quic(
            "127.0.0.1",
            port,
            ca_file=cert_file,
            server_name="localhost",
            idle_timeout=PAIR_IDLE_TIMEOUT,
        ) as transport:
            task_status.started(transport)
            await trio.sleep_forever()  # the pair's transport lives until the binding ends

    async with trio.open_nursery() as nursery:

        async def make(max_unit: int | None = None) -> Pair:
            peer = QuicServerPeer(cert_file, key_file)
            peers.append(peer)
            port = await peer.listen()
            with trio.fail_after(10):
                transport = await nursery.start(client, port)
                await transport.send_streams([(c, syn_header(c), False) for c in CHANNELS if c])
                await peer.opened(CHANNELS)
                while transport.pending_bytes:  # the SYNs acknowledged: a check starts
                    await trio.sleep(0.005)  # from nothing in flight (backpressure counts)
            return Pair(
                transport,
                peer,
                quic_error_code,
                channels=CHANNELS,
                max_unit=max_unit,
                fin_on_end=False,
            )

        try:
            yield Binding("quic-client", make, per_stream=True)
        finally:
            nursery.cancel_scope.cancel()  # every client goes, then every peer
            await _stop_all(peers)
