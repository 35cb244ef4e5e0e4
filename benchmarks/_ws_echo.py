"""``atp bench ws``'s second baseline: a picows echo server (asyncio + C), the fastest
Python WebSocket server a user would pick (issue 14 item 6), driven by the *same* client
and workload as the router's throughput scenario.

* server — picows' ``ws_create_server`` in its own process, on asyncio's default event loop
  (no uvloop: what a user gets with ``pip install picows``), echoing every text or binary
  frame as it is parsed (``transport.send``, one socket write per message, as picows'
  own echo example does), pings answered by picows (auto-pong);
* client — the relay's load generator, unchanged in kind: ``procs`` forked client
  processes on trio, the shared raw wsproto client (:mod:`atp_proto.transports.ws_client`,
  no reader task), the relay's session count (one per 50 streams), and the relay's frame
  count: streams × frames messages in all, of CHUNK bytes each (the relayed chunk). Each
  session keeps ``window`` messages in flight and sends what it may in one socket write
  (:meth:`~atp_proto.transports.ws_server.WsConnection.send_many`), as the router's
  writer coalesces its frames. messages/s = echoed messages / wall time from the first
  send to the last echo, and both sides' CPU over that interval (the client being the
  limit would show there);
* for reference (not a goal): the same echo driven by picows' own C client (asyncio, the
  same sessions, window and count), which shows how much of the echo figure is our
  client's cost rather than the server's.

picows is a benchmark baseline only (the ``dev`` extra); without it the baseline is
reported as missing and the goal against it is not judged.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from ._harness import _fork, version
from ._loadgen import client_process, collect, split, start_together

STREAMS_PER_SESSION = 50  #: as the relay's clients


def available() -> bool:
    try:
        import picows  # noqa: F401
    except ImportError:
        return False
    return True


def _picows_server(pipe: Any) -> None:
    """The echo server process: reports its port, serves until told "stop"."""
    import asyncio

    import picows
    from picows import WSListener, WSMsgType

    class Echo(WSListener):
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            kind = frame.msg_type
            if kind is WSMsgType.BINARY or kind is WSMsgType.TEXT:
                # fragmented messages do not occur in this workload (one frame each)
                transport.send(kind, frame.get_payload_as_memoryview())
            elif kind is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()

    async def main() -> None:
        server = await picows.ws_create_server(lambda _request: Echo(), "127.0.0.1", 0)
        pipe.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)  # "stop"
        server.close()

    asyncio.run(main())


def _size(message: object) -> int:
    if not isinstance(message, bytes):
        raise RuntimeError(f"unexpected message from the echo server: {message!r:.200}")
    return len(message)


def _result(tot: dict[str, int], marks: dict[str, float]) -> dict[str, Any]:
    """A client process's figures, for the parent."""
    return {
        **tot,
        "start": marks["start"],
        "end": marks["end"],
        "cpu": time.process_time() - marks["cpu0"],
    }


def _echo_client(
    url: str, messages: int, window: int, sessions: int, barrier: Any, out: Any
) -> None:
    """One client process: ``messages`` echoes over ``sessions`` sessions."""
    import trio

    from atp_proto.transports.ws_client import connect_ws

    per = split(messages, sessions)
    payload = b"x" * 200
    marks: dict[str, float] = {}
    tot = {"echoed": 0, "bytes": 0}

    async def session(n: int, ready: trio.Semaphore, go: trio.Event) -> None:
        ws = await connect_ws(url, max_message_size=1 << 20)
        try:
            ready.release()
            await go.wait()
            sent = min(window, n)
            await ws.send_many([payload] * sent)
            got = 0
            while got < n:
                tot["bytes"] += _size(await ws.receive())
                got += 1
                # everything wsproto already parsed is taken before the next send
                while got < n and ws.buffered:
                    tot["bytes"] += _size(await ws.receive())
                    got += 1
                more = min(n - sent, window - (sent - got))
                if more > 0:
                    await ws.send_many([payload] * more)
                    sent += more
            tot["echoed"] += got
            marks["end"] = max(marks.get("end", 0.0), time.perf_counter())
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await ws.close(1000, "")

    client_process(
        lambda: trio.run(start_together, per, session, barrier, marks),
        barrier,
        out,
        lambda: _result(tot, marks),
    )


def _picows_client(
    url: str, messages: int, window: int, sessions: int, barrier: Any, out: Any
) -> None:
    """A reference client process: picows' own (C) client on asyncio, the same sessions,
    window and message count as :func:`_echo_client`; one send per echoed message."""
    import asyncio

    import picows
    from picows import WSListener, WSMsgType

    per = split(messages, sessions)
    payload = b"x" * 200
    marks: dict[str, float] = {}
    tot = {"echoed": 0, "bytes": 0}

    class Client(WSListener):
        def __init__(self, n: int) -> None:
            self.n, self.sent, self.got = n, 0, 0
            self.done = asyncio.get_running_loop().create_future()

        def start(self, transport: Any) -> None:
            self.transport = transport
            while self.sent < min(window, self.n):
                transport.send(WSMsgType.BINARY, payload)
                self.sent += 1

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type is not WSMsgType.BINARY:
                return
            self.got += 1
            tot["bytes"] += len(frame.get_payload_as_memoryview())
            if self.sent < self.n:
                transport.send(WSMsgType.BINARY, payload)
                self.sent += 1
            elif self.got == self.n and not self.done.done():
                self.done.set_result(None)

    async def main() -> None:
        pairs: list[tuple[Any, Any]] = [
            await picows.ws_connect(lambda n=n: Client(n), url) for n in per
        ]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, barrier.wait)
        marks["cpu0"] = time.process_time()
        marks["start"] = time.perf_counter()
        for transport, client in pairs:
            client.start(transport)
        for _, client in pairs:
            await client.done
            tot["echoed"] += client.got
        marks["end"] = time.perf_counter()
        for transport, _ in pairs:
            transport.send_close()
            transport.disconnect()

    client_process(
        lambda: asyncio.run(main()),
        barrier,
        out,
        lambda: _result(tot, marks),
    )


def drive_echo(
    url: str,
    server_pid: int,
    streams: int,
    frames: int,
    window: int,
    procs: int = 2,
    client: Any = _echo_client,
) -> dict[str, Any]:
    """streams × frames echoes from ``procs`` client processes (the relay's shape)."""
    ctx = _fork()
    barrier = ctx.Barrier(procs + 1)
    pipes, children = [], []
    for i in range(procs):
        n_streams = streams // procs + (1 if i < streams % procs else 0)
        sessions = max(1, -(-n_streams // STREAMS_PER_SESSION))
        parent, child = ctx.Pipe()
        p = ctx.Process(
            target=client,
            args=(url, n_streams * frames, window, sessions, barrier, child),
            daemon=True,
        )
        p.start()
        pipes.append((parent, sessions))
        children.append(p)
    results, server_cpu = collect(
        barrier, [parent for parent, _ in pipes], children, server_pid, "echo baseline"
    )
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        raise RuntimeError(f"echo baseline: a client failed: {errors[0]}")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    echoed = sum(r["echoed"] for r in results)
    return {
        "messages": echoed,
        "message_bytes": 200,
        "window_per_session": window,
        "sessions": sum(s for _, s in pipes),
        "client_processes": procs,
        "seconds": wall,
        "messages_per_s": echoed / wall,
        "server_cpu_pct": 100 * server_cpu / wall,
        "client_cpu_pct": 100 * sum(r["cpu"] for r in results) / wall,
    }


class PicowsEcho:
    """The picows echo server process, kept up so that its runs can interleave with the
    relay's (``atp bench ws`` alternates them: on a loaded host one run of each is noise).
    ``with PicowsEcho() as echo: echo.run(...)``."""

    def __init__(self) -> None:
        ctx = _fork()
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=_picows_server, args=(child,), daemon=True)
        self._proc.start()
        if not self._pipe.poll(30):
            self.close()
            raise RuntimeError("picows echo server did not start")
        self.url = f"ws://127.0.0.1:{self._pipe.recv()}/"
        self.server = f"picows {version('picows')} (asyncio)"

    def run(self, streams: int, frames: int, window: int, *, own_client: bool = False) -> Any:
        """One measured run with the relay's client (``own_client``: picows' C client)."""
        client = _picows_client if own_client else _echo_client
        return drive_echo(self.url, self._proc.pid, streams, frames, window, client=client)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send("stop")
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()

    def __enter__(self) -> PicowsEcho:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def bench_picows(streams: int, frames: int, window: int) -> dict[str, Any] | None:
    """The picows echo, warmed up, then measured once, and the reference run with its
    own client; None when picows is not installed."""
    if not available():
        return None
    with PicowsEcho() as echo:
        echo.run(max(2, streams // 10), frames, window)  # warm-up
        result = echo.run(streams, frames, window)
        # for reference, not judged: what the server does with its own C client
        result["picows_client"] = echo.run(streams, frames, window, own_client=True)
    return {"server": echo.server, **result}
