"""The aioquic asyncio echo that ``atp bench quic`` measures beside the router
(benchmarks/bench_quic.py): its server (a subprocess) and client (the bench process), and
the CPU-time reading both benchmarks' parts use."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import ssl
import time
from typing import Any

from . import _harness


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used; 0 where /proc is absent."""
    try:
        return _harness._cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


#: the socket buffers our transport asks for (atp_proto/transports/_quic_udp.py)
SOCKET_BUFFER = 4 * 1024 * 1024


def _tune_socket(transport: Any) -> None:
    """Give an asyncio datagram transport's socket our transport's buffer sizes."""
    sock = transport.get_extra_info("socket")
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


# ------------------------------------------------------------------ the aioquic echo


def _echo_server(cert: str, key: str, datagram: int, ready: Any) -> None:
    """The aioquic echo on a UDP port the kernel picks; sends that port to ``ready``."""
    from aioquic.asyncio import serve
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events as qe
    from aioquic.quic.configuration import QuicConfiguration

    class Echo(QuicConnectionProtocol):
        def quic_event_received(self, event: qe.QuicEvent) -> None:
            if isinstance(event, qe.StreamDataReceived):
                self._quic.send_stream_data(event.stream_id, event.data, event.end_stream)
                self.transmit()

    async def main() -> None:
        conf = QuicConfiguration(is_client=False, alpn_protocols=["echo"])
        if datagram:
            conf.max_datagram_size = datagram
            conf.max_data, conf.max_stream_data = 4 << 20, 1 << 20
        conf.load_cert_chain(cert, key)
        server = await serve("127.0.0.1", 0, configuration=conf, create_protocol=Echo)
        if datagram:
            _tune_socket(server._transport)
        ready.send(server._transport.get_extra_info("sockname")[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def _echo_client(
    port: int, datagram: int, size: int, streams: int, per_stream: int
) -> tuple[float, float]:
    """Messages/s echoed, and the client's CPU seconds for them: ``streams`` concurrent
    streams each writing ``per_stream`` messages of ``size`` bytes back to back, reading
    the echo."""
    from aioquic.asyncio import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events as qe
    from aioquic.quic.configuration import QuicConfiguration

    total = size * per_stream

    class Client(QuicConnectionProtocol):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.got: dict[int, int] = {}
            self.done = asyncio.Event()

        def quic_event_received(self, event: qe.QuicEvent) -> None:
            if isinstance(event, qe.StreamDataReceived):
                self.got[event.stream_id] = self.got.get(event.stream_id, 0) + len(event.data)
                if len(self.got) == streams and all(v >= total for v in self.got.values()):
                    self.done.set()

    async def main() -> tuple[float, float]:
        conf = QuicConfiguration(is_client=True, alpn_protocols=["echo"])
        conf.verify_mode = ssl.CERT_NONE
        if datagram:
            conf.max_datagram_size = datagram
            conf.max_data, conf.max_stream_data = 4 << 20, 1 << 20
        async with connect("127.0.0.1", port, configuration=conf, create_protocol=Client) as c:
            assert isinstance(c, Client)
            if datagram:
                _tune_socket(c._transport)
            msg = b"x" * size
            start = time.perf_counter()
            cpu0 = time.process_time()
            for _ in range(streams):
                sid = c._quic.get_next_available_stream_id()
                for _ in range(per_stream):
                    c._quic.send_stream_data(sid, msg)
                c.transmit()
            await asyncio.wait_for(c.done.wait(), 120)
            elapsed = time.perf_counter() - start
            return streams * per_stream / elapsed, time.process_time() - cpu0

    return asyncio.run(main())


def _baseline(
    cert: str, key: str, datagram: int, size: int, streams: int, n: int
) -> dict[str, float]:
    """The echo's messages/s and both ends' CPU microseconds per message."""
    ctx = mp.get_context("spawn")
    ready, tell = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_echo_server, args=(cert, key, datagram, tell), daemon=True)
    proc.start()
    try:
        if not ready.poll(30):
            raise RuntimeError("the aioquic echo server did not start")
        port = int(ready.recv())
        assert proc.pid is not None
        server0 = _cpu_s(proc.pid)
        rate, client_cpu = _echo_client(port, datagram, size, streams, n)
        msgs = streams * n
        return {
            "rate": rate,
            "server_cpu_us": (_cpu_s(proc.pid) - server0) / msgs * 1e6,
            "client_cpu_us": client_cpu / msgs * 1e6,
        }
    finally:
        proc.kill()
        proc.join(5)
