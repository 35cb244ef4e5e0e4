"""WebSocket relay benchmark: one router process relaying PARTIAL frames from a
``builtin:echo`` adapter to raw sans-IO clients over loopback, beside a bare trio-websocket
echo measured in the same run.

Run it as ``atp bench ws [--json] [--quick]`` (or ``python -m benchmarks.bench_ws``).

Each router is a separate process started as ``python -m atp_proto serve --no-auth --ws
127.0.0.1:0 --metrics off --max-sessions 20000 --adapter ...`` (through a small ``-c``
wrapper that first raises RLIMIT_NOFILE); its address is read from its "router listening"
log line. The clients speak ATP through the sans-IO :class:`~atp_proto.frames.Connection`
directly (no :mod:`atp_proto.client` layers) over the shared raw wsproto client
(:mod:`atp_proto.transports.ws_client`, no reader task), acknowledging credit once per
received WebSocket message per stream. (Until issue 10 the throughput and background
clients used trio-websocket; figures recorded before then include its client-side hops.)

Scenarios:

* **throughput** — N streams × M PARTIALs. A stream's SYN carries a prompt of 200·M
  characters and ``meta {"adapters": ["echo"]}``; the router's adapter is
  ``builtin:echo?chunks=M``, so it relays M PARTIAL frames, each carrying a 200-character
  chunk (the PARTIAL frame is ~309 B: 24 B header, a CBOR payload holding the chunk plus
  ``type``, ``chunk``, ``adapter``, ``confidence``), then a FINAL. Two client processes,
  50 streams per session. frames/s = PARTIAL frames received by the clients / wall time
  from the first SYN sent to the last FINAL received (a steady-state rate, first to last
  PARTIAL, is shown too). The router's and the clients' CPU use over that interval are
  reported, to show which side is the limit.
* **baseline** — a bare trio-websocket echo server (its own process) and a trio-websocket
  client in the benchmark process sending one 200-byte message per frame, 64 in flight;
  echoed messages/s.
* **picows baseline** — the fastest Python WebSocket echo a user would pick: picows
  (asyncio + C) in its own process, driven by the throughput scenario's own client and
  workload (the same two client processes, raw wsproto client, sessions of 50 streams,
  streams × M messages of 200 bytes, 64 in flight per session, sends coalesced); echoed
  messages/s, and the server's and clients' CPU (``benchmarks/_ws_echo.py``). The echo and
  the relay's throughput scenario are alternated (3 rounds; 2 with ``--quick``) and the
  goal compares their medians: on a loaded host one run of each moves by a third. For
  reference (not a goal), the same echo driven by picows' own C client: it shows how much
  of the echo figure is the Python client's cost.
* **latency** — with 1,000 concurrent streams open and streaming (a background client
  process; adapter ``builtin:echo?chunks=K&latency_ms=100``, i.e. one PARTIAL per stream
  every 100 ms, ~10k PARTIALs/s in all), a probe client sends one SYN at a time (adapter
  ``builtin:echo``: one PARTIAL, then a FINAL) and measures **SYN→first PARTIAL**: from
  just before the SYN is handed to the WebSocket until the message holding the first
  PARTIAL is received (``time.perf_counter``, same process; nothing subtracted: it
  includes the probe's WebSocket and ATP encoding, the kernel both ways, parsing the SYN,
  the adapter's Estimate, admission and the first chunk). The probe speaks WebSocket
  with the shared raw wsproto client in its own task (:class:`_RawWs`), as a load
  generator should: a client
  library's reader-task hop (trio-websocket's) would add its own scheduling to the
  router's figure. Also reported: the gaps between consecutive PARTIALs of
  the paced background streams (ideally 100 ms; the excess is scheduling delay).
  The router gets ``[admission] initial_limit = 2048`` (config file): with the default
  AIMD limit of 64 and a queue of 256, 1,000 long streams cannot be open at once.
* **idle sessions** — a client process opens 10,000 WebSocket sessions (raw wsproto on
  trio: handshake, one CAPABILITIES exchange, then idle) to a fresh router; the router's
  VmRSS (``/proc/PID/status``) is read before (10 warm sessions open) and after.

Goals (a full run exits 1 when one fails): relay ≥ 100,000 PARTIAL frames/s, ≥ 10× the
trio-websocket baseline and ≥ 1.0× the picows echo (issue 14 item 6); SYN→first PARTIAL
p50 ≤ 0.5 ms with 1,000 concurrent streams; router RSS with 10,000 idle sessions ≤ 1 GiB.
``--quick`` scales everything down (1,000 idle sessions, RSS extrapolated to 10,000; 100
background streams); its numbers are rough, so it reports the goals without judging them
and exits 0 (``benchmarks/_report.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from . import _harness, _report, _ws_echo
from ._harness import RouterProcess, _cpu_ticks, _dist_ms, _fork, _raise_nofile, _rss
from ._report import Goal, judge

CHUNK = 200  #: characters per relayed chunk (the "200-byte frame")
WINDOW = 64  #: baseline messages in flight
PACE_MS = 100  #: background streams: one PARTIAL per stream every PACE_MS
STREAMS_PER_SESSION = 50  #: the router allows 100 concurrent streams per session
HANDSHAKES_IN_FLIGHT = 100
GIB = 1 << 30

GOAL_FPS = 100_000.0
GOAL_VS_BASELINE = 10.0
GOAL_VS_PICOWS = 1.0
GOAL_P50_MS = 0.5
GOAL_SESSIONS = 10_000
GOAL_RSS = GIB


@dataclass(frozen=True)
class Sizes:
    streams: int  #: throughput: concurrent streams
    frames: int  #: throughput: PARTIALs per stream (M)
    baseline_s: float
    background: int  #: latency: concurrent background streams
    probes: int
    sessions: int  #: idle sessions
    rounds: int  #: picows echo and relay runs, alternated


FULL = Sizes(
    streams=200,
    frames=1000,
    baseline_s=3.0,
    background=1000,
    probes=1000,
    sessions=10_000,
    rounds=3,
)
QUICK = Sizes(
    streams=20, frames=200, baseline_s=0.5, background=100, probes=100, sessions=1000, rounds=2
)


# ------------------------------------------------------------------------------ helpers


def _prompt_body(chars: int) -> bytes:
    import cbor2

    return cbor2.dumps({"type": "agent.task", "content": {"prompt": "x" * chars}})


# ------------------------------------------------------------------------------ ATP client


class _AtpSession:
    """A raw ATP session: the shared raw WebSocket client + the sans-IO Connection, no
    client layers."""

    def __init__(self, ws: Any) -> None:
        import trio

        from atp_proto.frames import Connection, Role

        self.ws = ws
        self.conn = Connection(Role.CLIENT, now=trio.current_time())

    async def flush(self) -> None:
        for message in self.conn.data_to_send():
            await self.ws.send_message(message)

    async def handshake(self) -> None:
        """CAPABILITIES both ways (so the router's window and limits are known)."""
        import trio

        from atp_proto.frames import CapabilitiesReceived

        self.conn.send_capabilities()
        await self.flush()
        while True:
            msg = await self.ws.get_message()
            events = self.conn.receive_message(msg, trio.current_time())
            if any(isinstance(e, CapabilitiesReceived) for e in events):
                return

    async def open(self, body: bytes, adapter: str) -> int:
        """Send one SYN (one WebSocket message: the router takes messages <= ~1 MiB)."""
        sid = self.conn.open_stream(body, meta={"task_type": "qa", "adapters": [adapter]}, now=None)
        await self.flush()
        return sid


class _RawWs:
    """The latency probe's client: the shared raw wsproto client
    (:func:`atp_proto.transports.ws_client.connect_ws`), no reader task. Reading happens
    in the probe's own task, so the figure holds the router's time and the kernel's, not a
    client library's task hop (trio-websocket's client hands each message through a
    channel from its reader task)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str) -> _RawWs:
        from atp_proto.transports.ws_client import connect_ws

        return cls(await connect_ws(url, max_message_size=64 << 20))

    async def send_message(self, data: bytes) -> None:
        await self.ws.send(data)

    async def get_message(self) -> bytes:
        message = await self.ws.receive()  # TransportClosed when the router closed
        if not isinstance(message, bytes):
            raise RuntimeError(f"unexpected message from the router: {message!r:.200}")
        return message

    async def aclose(self) -> None:
        await self.ws.abort()


@contextlib.asynccontextmanager
async def _open_ws(url: str) -> Any:
    """A load-generator session on the shared raw client (no reader task: the load
    client reads in its own task), closed with a close handshake at the end."""
    ws = await _RawWs.connect(url)
    try:
        yield ws
    finally:
        import trio

        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await ws.ws.close(1000, "")


# ------------------------------------------------------------------------------ throughput


def _tp_client(url: str, streams: int, frames: int, barrier: Any, out: Any) -> None:
    """One throughput client process: its streams spread over sessions of 50 streams."""
    import trio

    from atp_proto.frames import ConnectionClosed, MessageReceived, StreamReset

    body = _prompt_body(CHUNK * frames)
    n_sessions = -(-streams // STREAMS_PER_SESSION)
    per = [
        streams // n_sessions + (1 if i < streams % n_sessions else 0) for i in range(n_sessions)
    ]
    tot = {"partials": 0, "finals": 0, "partial_bytes": 0, "errors": 0}
    first_error: list[str] = []
    marks: dict[str, float] = {}

    async def read(s: _AtpSession, n: int) -> None:
        """Receive until ``n`` streams ended, acknowledging credit once per message."""
        conn, done = s.conn, 0
        while done < n:
            msg = await s.ws.get_message()
            events = conn.receive_message(msg, trio.current_time())
            acks: dict[int, int] = {}
            for ev in events:
                if type(ev) is MessageReceived:
                    if ev.end_stream:
                        done += 1
                        tot["finals"] += 1
                    else:
                        if not tot["partials"]:
                            marks["first"] = time.perf_counter()
                        tot["partials"] += 1
                        tot["partial_bytes"] += ev.size
                        acks[ev.stream_id] = acks.get(ev.stream_id, 0) + ev.size
                elif isinstance(ev, StreamReset | ConnectionClosed):
                    tot["errors"] += 1
                    done += 1
                    first_error.append(f"{ev.code}: {ev.message}")
                    if isinstance(ev, ConnectionClosed):
                        done = n
            for sid, size in acks.items():
                conn.acknowledge(sid, size)
            if conn.has_data_to_send():
                await s.flush()
        marks["end"] = max(marks.get("end", 0.0), time.perf_counter())

    async def session(n: int, ready: trio.Semaphore, go: trio.Event) -> None:
        async with _open_ws(url) as ws:
            s = _AtpSession(ws)
            await s.handshake()
            ready.release()
            await go.wait()

            async def send_syns() -> None:
                for _ in range(n):
                    await s.open(body, "echo")

            async with trio.open_nursery() as nursery:
                # read while the SYNs go out: the router streams as soon as one arrives
                nursery.start_soon(send_syns)
                await read(s, n)

    async def main() -> None:
        ready = trio.Semaphore(0)
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for n in per:
                nursery.start_soon(session, n, ready, go)
            for _ in per:
                await ready.acquire()
            await trio.to_thread.run_sync(barrier.wait)
            marks["cpu0"] = time.process_time()
            marks["start"] = time.perf_counter()
            go.set()

    try:
        trio.run(main)
        out.send(
            {
                **tot,
                "sessions": n_sessions,
                "start": marks["start"],
                "first": marks["first"],
                "end": marks["end"],
                "cpu": time.process_time() - marks["cpu0"],
                "error": first_error[0] if first_error else None,
            }
        )
    except BaseException as exc:  # report, never hang the parent
        barrier.abort()
        out.send({"error": f"{type(exc).__name__}: {exc}"})


def bench_throughput(
    url: str, router_pid: int, streams: int, frames: int, procs: int = 2
) -> dict[str, Any]:
    """N streams × M PARTIALs through the router, from ``procs`` client processes."""
    ctx = _fork()
    barrier = ctx.Barrier(procs + 1)
    pipes, children = [], []
    for i in range(procs):
        parent, child = ctx.Pipe()
        n = streams // procs + (1 if i < streams % procs else 0)
        p = ctx.Process(target=_tp_client, args=(url, n, frames, barrier, child), daemon=True)
        p.start()
        pipes.append(parent)
        children.append(p)
    try:
        barrier.wait(60)
        rcpu0 = _cpu_ticks(router_pid)
        results = []
        for parent in pipes:
            if not parent.poll(300):
                raise RuntimeError("throughput: a client did not finish in 300 s")
            results.append(parent.recv())
        rcpu = (_cpu_ticks(router_pid) - rcpu0) / os.sysconf("SC_CLK_TCK")
    finally:
        for p in children:
            p.join(10)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        raise RuntimeError(f"throughput: streams failed, first: {errors[0]}")
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    first = min(r["first"] for r in results)
    wall = end - start
    partials = sum(r["partials"] for r in results)
    return {
        "streams": streams,
        "client_processes": procs,
        "sessions": sum(r["sessions"] for r in results),
        "frames_per_stream": frames,
        "partials": partials,
        "finals": sum(r["finals"] for r in results),
        "partial_frame_bytes": sum(r["partial_bytes"] for r in results) / max(partials, 1),
        "syn_bytes": len(_prompt_body(CHUNK * frames)),
        "seconds": wall,
        "frames_per_s": partials / wall,
        "steady_frames_per_s": partials / (end - first),
        "router_cpu_pct": 100 * rcpu / wall,
        "client_cpu_pct": 100 * sum(r["cpu"] for r in results) / wall,
    }


# ------------------------------------------------------------------------------ baseline


def _echo_server(pipe: Any) -> None:
    import trio
    import trio_websocket

    async def handler(request: Any) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
            )
            pipe.send(server.port)
            await trio.to_thread.run_sync(pipe.recv)  # "stop"
            nursery.cancel_scope.cancel()

    trio.run(main)


def bench_baseline(seconds: float) -> dict[str, Any]:
    import trio
    import trio_websocket

    ctx = _fork()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo_server, args=(child,), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("baseline echo server did not start")
        port = parent.recv()
        payload = b"x" * CHUNK
        count = {"n": 0}
        marks: dict[str, float] = {}

        async def main() -> None:
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                window = trio.Semaphore(WINDOW)
                stop = trio.Event()

                async def sender() -> None:
                    while not stop.is_set():
                        await window.acquire()
                        await ws.send_message(payload)

                async def receiver() -> None:
                    while True:
                        await ws.get_message()
                        count["n"] += 1
                        window.release()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender)
                    nursery.start_soon(receiver)
                    await trio.sleep(min(0.5, seconds))  # warm up
                    n0, t0 = count["n"], time.perf_counter()
                    await trio.sleep(seconds)
                    marks["n"], marks["s"] = count["n"] - n0, time.perf_counter() - t0
                    stop.set()
                    nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    return {
        "server": f"trio-websocket {metadata.version('trio-websocket')}",
        "message_bytes": CHUNK,
        "window": WINDOW,
        "messages": int(marks["n"]),
        "seconds": marks["s"],
        "messages_per_s": marks["n"] / marks["s"],
    }


# ------------------------------------------------------------------------------ latency


def _background(url: str, streams: int, chunks: int, pipe: Any) -> None:
    """Keep ``streams`` paced streams open; report PARTIAL gaps between 'ready' and 'stop'."""
    import trio

    from atp_proto.frames import ConnectionClosed, MessageReceived, StreamReset

    body = _prompt_body(CHUNK * chunks)
    n_sessions = -(-streams // STREAMS_PER_SESSION)
    st = {"seen": 0, "ended": 0, "frames": 0, "measuring": False}
    last: dict[tuple[int, int], float] = {}
    gaps: list[float] = []

    async def session(idx: int, n: int, all_seen: trio.Event) -> None:
        async with _open_ws(url) as ws:
            s = _AtpSession(ws)
            await s.handshake()
            for _ in range(n):
                await s.open(body, "paced")
            conn = s.conn
            while True:
                msg = await ws.get_message()
                now = time.perf_counter()
                events = conn.receive_message(msg, trio.current_time())
                for ev in events:
                    if type(ev) is MessageReceived:
                        key = (idx, ev.stream_id)
                        if ev.end_stream:
                            st["ended"] += 1
                        elif key in last:
                            if st["measuring"]:
                                gaps.append(now - last[key])
                                st["frames"] += 1
                        else:
                            st["seen"] += 1
                            if st["seen"] == streams:
                                all_seen.set()
                        last[key] = now
                        conn.acknowledge(ev.stream_id, ev.size)
                    elif isinstance(ev, StreamReset | ConnectionClosed):
                        st["ended"] += 1
                if conn.has_data_to_send():
                    await s.flush()

    async def main() -> None:
        all_seen = trio.Event()
        async with trio.open_nursery() as nursery:
            for i in range(n_sessions):
                n = min(STREAMS_PER_SESSION, streams - i * STREAMS_PER_SESSION)
                nursery.start_soon(session, i, n, all_seen)
            with trio.move_on_after(60):
                await all_seen.wait()
            st["measuring"] = True
            t0 = time.perf_counter()
            ended0 = st["ended"]
            pipe.send(("ready", st["seen"], ended0))
            await trio.to_thread.run_sync(pipe.recv)  # "stop"
            wall = time.perf_counter() - t0
            pipe.send(
                {
                    "open_at_start": st["seen"] - ended0,
                    "ended_during": st["ended"] - ended0,
                    "gaps": gaps,
                    "frames_per_s": st["frames"] / wall,
                }
            )
            nursery.cancel_scope.cancel()

    trio.run(main)


def bench_latency(url: str, background: int, probes: int) -> dict[str, Any]:
    import trio

    from atp_proto.frames import MessageReceived, StreamReset

    # paced streams must outlive the probe phase; they are closed with their sessions
    chunks = 300
    ctx = _fork()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_background, args=(url, background, chunks, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(90):
            raise RuntimeError("latency: the background streams did not start")
        _, seen, ended = parent.recv()
        if seen < background or ended:
            raise RuntimeError(
                f"latency: only {seen - ended} of {background} background streams are open"
            )
        body = _prompt_body(CHUNK)
        lat: list[float] = []
        errors: list[str] = []

        async def main() -> None:
            ws = await _RawWs.connect(url)
            try:
                s = _AtpSession(ws)
                await s.handshake()
                conn = s.conn
                warm = max(10, probes // 20)
                for i in range(warm + probes):
                    t0 = time.perf_counter()
                    sid = await s.open(body, "probe")
                    first: float | None = None
                    finished = False
                    while not finished:
                        msg = await ws.get_message()
                        now = time.perf_counter()
                        for ev in conn.receive_message(msg, trio.current_time()):
                            if type(ev) is MessageReceived and ev.stream_id == sid:
                                if first is None and not ev.end_stream:
                                    first = now
                                finished = ev.end_stream
                            elif isinstance(ev, StreamReset):
                                errors.append(f"{ev.code}: {ev.message}")
                                finished = True
                    if first is not None and i >= warm:
                        lat.append(first - t0)
                # Let the paced streams produce a few PARTIALs each even when the probes
                # were quick (--quick), so the gap figure always has samples.
                await trio.sleep(max(0.0, 3 * PACE_MS / 1000 - (time.perf_counter() - start)))
            finally:
                await ws.aclose()

        start = time.perf_counter()
        trio.run(main)
        parent.send("stop")
        if not parent.poll(30):
            raise RuntimeError("latency: the background client did not report")
        bg = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    if errors or not lat:
        raise RuntimeError(f"latency: probe streams failed: {errors[:1]}")
    return {
        "background_streams": background,
        "background_open_during_probes": bg["open_at_start"] - bg["ended_during"],
        "background_pace_ms": PACE_MS,
        "background_frames_per_s": bg["frames_per_s"],
        "probes": len(lat),
        "syn_to_first_partial_ms": _dist_ms(lat),
        "partial_gap_ms": _dist_ms(bg["gaps"]) if bg["gaps"] else None,
    }


# ------------------------------------------------------------------------------ idle sessions


def _idle_client(host: str, port: int, path: str, warm: int, n: int, pipe: Any) -> None:
    """Open ``warm`` then ``n`` idle sessions (handshake + CAPABILITIES); hold them."""
    import trio

    from atp_proto.frames import Connection, FrameType, Role, decode_frames
    from atp_proto.transports import TransportClosed
    from atp_proto.transports.ws_client import HandshakeRefused, connect_ws

    _raise_nofile()
    c = Connection(Role.CLIENT, now=0.0)
    c.send_capabilities()
    caps = c.data_to_send()[0]
    assert isinstance(caps, bytes)
    held: list[Any] = []
    failures: list[str] = []

    async def one(sem: trio.Semaphore) -> None:
        async with sem:
            try:
                ws = await connect_ws(f"ws://{host}:{port}{path}")
                await ws.send(caps)
                while True:
                    message = await ws.receive()
                    if (
                        isinstance(message, bytes)
                        and decode_frames(message)[0].type == FrameType.CAPABILITIES
                    ):
                        break
                held.append(ws)
            except (OSError, TransportClosed, HandshakeRefused, trio.BrokenResourceError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    async def batch(count: int) -> float:
        sem = trio.Semaphore(HANDSHAKES_IN_FLIGHT)
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one, sem)
        return time.perf_counter() - t0

    async def main() -> None:
        await batch(warm)
        pipe.send(("warm", len(held), failures[:1]))
        await trio.to_thread.run_sync(pipe.recv)  # "go"
        seconds = await batch(n)
        pipe.send(("ready", len(held) - warm, failures[:1], seconds))
        await trio.to_thread.run_sync(pipe.recv)  # "close"
        for ws in held:
            with contextlib.suppress(Exception):
                ws.stream.socket.close()

    trio.run(main)


def bench_sessions(n: int) -> dict[str, Any]:
    from urllib.parse import urlsplit

    router = RouterProcess({"echo": "builtin:echo"})
    try:
        u = urlsplit(router.url)
        assert u.hostname is not None and u.port is not None
        ctx = _fork()
        parent, child = ctx.Pipe()
        warm = 10
        proc = ctx.Process(
            target=_idle_client, args=(u.hostname, u.port, u.path, warm, n, child), daemon=True
        )
        proc.start()
        try:
            if not parent.poll(60):
                raise RuntimeError("idle sessions: the client did not start")
            _, opened, fail = parent.recv()
            if opened != warm:
                raise RuntimeError(f"idle sessions: warm-up failed: {fail}")
            time.sleep(0.5)
            before = _rss(router.pid)
            parent.send("go")
            if not parent.poll(300):
                raise RuntimeError("idle sessions: opening took more than 300 s")
            _, opened, fail, seconds = parent.recv()
            time.sleep(1.0)
            after = _rss(router.pid)
            parent.send("close")
        finally:
            proc.join(20)
            if proc.is_alive():
                proc.kill()
        if opened != n:
            raise RuntimeError(f"idle sessions: {opened} of {n} opened; first failure: {fail}")
    finally:
        router.close()
    per = (after - before) / n
    return {
        "sessions": n,
        "open_seconds": seconds,
        "sessions_per_s": n / seconds,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_session": per,
        "rss_at_10k_bytes": before + per * GOAL_SESSIONS,
        "extrapolated": n != GOAL_SESSIONS,
    }


# ------------------------------------------------------------------------------ run


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _picows_result(
    echo: _ws_echo.PicowsEcho,
    runs: list[dict[str, Any]],
    relay_rounds: list[float],
    sz: Sizes,
) -> dict[str, Any]:
    """The picows baseline's JSON: the median run's figures, every round, the goal's
    ratio (median relay frames/s over median echo msg/s) and the reference run."""
    rates = [r["messages_per_s"] for r in runs]
    median_run = sorted(runs, key=lambda r: r["messages_per_s"])[len(runs) // 2]
    return {
        "server": echo.server,
        **median_run,
        "messages_per_s": _median(rates),
        "rounds": len(runs),
        "round_messages_per_s": rates,
        "relay_round_frames_per_s": relay_rounds,
        "relay_vs_echo": _median(relay_rounds) / _median(rates),
        "picows_client": echo.run(sz.streams, sz.frames, WINDOW, own_client=True),
    }


def machine_info() -> dict[str, Any]:
    return _harness.machine_info(trio="trio", trio_websocket="trio-websocket", picows="picows")


_ADMISSION = "[admission]\ninitial_limit = 2048\nmax_limit = 4096\nmax_queue = 4096\n"


def run_benchmark(quick: bool, progress: Any = None) -> dict[str, Any]:
    sz = QUICK if quick else FULL

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    say("idle sessions …")
    sessions = bench_sessions(sz.sessions)
    say("baseline: trio-websocket echo …")
    baseline = bench_baseline(sz.baseline_s)
    adapters = {
        "echo": f"builtin:echo?chunks={sz.frames}",
        "probe": "builtin:echo",
        "paced": f"builtin:echo?chunks=300&latency_ms={PACE_MS}",
    }
    router = RouterProcess(adapters, _ADMISSION)
    echo: _ws_echo.PicowsEcho | None = None
    try:
        say("throughput: warm-up …")
        bench_throughput(router.url, router.pid, max(2, sz.streams // 10), sz.frames)
        say("throughput …")
        throughput = bench_throughput(router.url, router.pid, sz.streams, sz.frames)
        picows = None
        if _ws_echo.available():
            echo = _ws_echo.PicowsEcho()
            # the picows goal: relay and echo alternated, medians compared (a loaded host
            # moves single runs by a third)
            relay_rounds = [throughput["frames_per_s"]]
            echo_runs: list[dict[str, Any]] = []
            say("baseline: picows echo, the relay's client and workload …")
            echo.run(max(2, sz.streams // 10), sz.frames, WINDOW)  # warm-up
            for i in range(sz.rounds):
                say(f"picows echo / relay, round {i + 1} of {sz.rounds} …")
                echo_runs.append(echo.run(sz.streams, sz.frames, WINDOW))
                if i + 1 < sz.rounds:
                    again = bench_throughput(router.url, router.pid, sz.streams, sz.frames)
                    relay_rounds.append(again["frames_per_s"])
            say("picows echo with its own client (reference) …")
            picows = _picows_result(echo, echo_runs, relay_rounds, sz)
        say("latency …")
        latency = bench_latency(router.url, sz.background, sz.probes)
    finally:
        router.close()
        if echo is not None:
            echo.close()

    fps = throughput["frames_per_s"]
    ratio = fps / baseline["messages_per_s"]
    p50 = latency["syn_to_first_partial_ms"]["p50"]
    rss10k = sessions["rss_at_10k_bytes"]
    goals = [
        Goal("relay PARTIAL frames/s", fps, GOAL_FPS, "frames/s"),
        Goal("relay vs trio-websocket echo baseline", ratio, GOAL_VS_BASELINE, "x"),
    ]
    if picows is not None:  # picows is in the dev extra; without it, no goal against it
        goals.append(
            Goal(
                "relay frames/s vs picows echo msg/s (same client and workload, medians "
                f"of {sz.rounds} interleaved rounds)",
                picows["relay_vs_echo"],
                GOAL_VS_PICOWS,
                "x",
            )
        )
    goals += [
        Goal(
            f"SYN→first PARTIAL p50 with {sz.background:,} concurrent streams",
            p50,
            GOAL_P50_MS,
            "ms",
            "<=",
        ),
        Goal(
            "router RSS with 10,000 idle sessions"
            + (f" (extrapolated from {sz.sessions:,})" if sessions["extrapolated"] else ""),
            rss10k / GIB,
            GOAL_RSS / GIB,
            "GiB",
            "<=",
        ),
    ]
    return {
        "benchmark": "ws",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "quick": quick,
            "chunk_chars": CHUNK,
            "streams": sz.streams,
            "frames_per_stream": sz.frames,
            "baseline_seconds": sz.baseline_s,
            "background_streams": sz.background,
            "probes": sz.probes,
            "idle_sessions": sz.sessions,
            "picows_rounds": sz.rounds,
            "router_adapters": adapters,
            "router_admission": {"initial_limit": 2048, "max_limit": 4096, "max_queue": 4096},
        },
        "results": {
            "throughput": throughput,
            "baseline": baseline,
            "picows": picows,
            "latency": latency,
            "sessions": sessions,
        },
        **judge(goals, quick=quick),
    }


# ------------------------------------------------------------------------------ output


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    r = result["results"]
    t, b, lat, s = r["throughput"], r["baseline"], r["latency"], r["sessions"]
    p = r.get("picows")
    syn, gap = lat["syn_to_first_partial_ms"], lat["partial_gap_ms"]
    fps = t["frames_per_s"]
    rows = [
        (
            f"throughput ({t['streams']} streams × {t['frames_per_stream']} PARTIALs, "
            f"{t['partial_frame_bytes']:.0f} B frames)",
            f"{fps:,.0f} frames/s",
            f"{b['messages_per_s']:,.0f} msg/s ({b['message_bytes']} B, {b['window']} in flight)",
            f"{p['messages_per_s']:,.0f} msg/s ({p['message_bytes']} B, "
            f"{p['window_per_session']} in flight × {p['sessions']} sessions)"
            if p
            else "picows not installed",
        ),
        (
            "  relay ÷ baseline",
            "",
            f"{fps / b['messages_per_s']:.2f}×",
            f"{p['relay_vs_echo']:.2f}× (medians of {p['rounds']} interleaved rounds: "
            f"relay {_median(p['relay_round_frames_per_s']):,.0f})"
            if p
            else "",
        ),
    ]
    if p and p.get("picows_client"):
        pc = p["picows_client"]
        rows.append(
            (
                "  reference, not a goal: the picows echo with picows' own C client (relay ÷ it)",
                "",
                "",
                f"{pc['messages_per_s']:,.0f} msg/s ({fps / pc['messages_per_s']:.2f}×)",
            )
        )
    rows += [
        (
            "  steady state (first PARTIAL → last PARTIAL)",
            f"{t['steady_frames_per_s']:,.0f} frames/s",
            "",
            "",
        ),
        (
            f"  CPU, % of one core (server / {t['client_processes']} client processes)",
            f"{t['router_cpu_pct']:.0f}% / {t['client_cpu_pct']:.0f}%",
            "",
            f"{p['server_cpu_pct']:.0f}% / {p['client_cpu_pct']:.0f}%" if p else "",
        ),
        (
            f"SYN→first PARTIAL, {lat['background_open_during_probes']:,} streams open (p50 / p99)",
            f"{syn['p50']:.3f} / {syn['p99']:.3f} ms",
            "",
            "",
        ),
    ]
    if gap:
        rows.append(
            (
                f"  gap between PARTIALs, paced every {lat['background_pace_ms']} ms (p50 / p99)",
                f"{gap['p50']:.2f} / {gap['p99']:.2f} ms",
                "",
                "",
            )
        )
    rows.append(
        (
            f"idle sessions: {s['sessions']:,} (RSS before → after)",
            f"{s['rss_before_bytes'] / 2**20:,.0f} → {s['rss_after_bytes'] / 2**20:,.0f} MiB, "
            f"{s['bytes_per_session'] / 1024:,.1f} KiB/session",
            "",
            "",
        )
    )
    return rows


def summary_lines(result: dict[str, Any]) -> list[str]:
    return _report.summary_lines(result)


def render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    m = result["machine"]
    console.print(
        f"atp bench ws — {m['cpu_model']}, {m['cpu_count']} cores, Python {m['python']}, "
        f"trio {m['trio']}, trio-websocket {m['trio_websocket']}, picows {m['picows']}, "
        f"{result['date']}" + _report.quick_note(result),
        markup=False,
    )
    table = Table()
    table.add_column("scenario")
    table.add_column("ATP router (builtin:echo)", justify="right")
    table.add_column("baseline: bare trio-websocket echo", justify="right")
    table.add_column("baseline: picows echo, the relay's client", justify="right")
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    _report.print_summary(console, summary_lines(result))


def markdown(result: dict[str, Any]) -> str:
    out = [
        "| scenario | ATP router (builtin:echo) | baseline: bare trio-websocket echo "
        "| baseline: picows echo, the relay's client |",
        "|---|---|---|---|",
    ]
    out += ["| " + " | ".join(c or "" for c in row) + " |" for row in table_rows(result)]
    out.append("")
    out += [f"- {line}" for line in summary_lines(result)]
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    """``atp bench ws``: 1 when a full run misses a goal, else 0 (a quick run is not
    judged)."""
    progress = None
    status = None
    if sys.stderr.isatty() and not args.json:
        from rich.console import Console

        status = Console(stderr=True).status("measuring…")
        status.start()
        progress = status.update
    try:
        result = run_benchmark(quick=args.quick, progress=progress)
    finally:
        if status is not None:
            status.stop()
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif getattr(args, "markdown", False):
        print(markdown(result))
    else:
        render(result)
    return _report.exit_code(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
