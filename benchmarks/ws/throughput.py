"""Throughput: N streams × M PARTIALs relayed by the router, from client processes."""

from __future__ import annotations

import time
from typing import Any

from .._harness import _fork
from .._loadgen import (
    AtpSession,
    client_process,
    collect,
    open_ws,
    prompt_body,
    split,
    start_together,
)
from .settings import (
    CHUNK,
    STREAMS_PER_SESSION,
)


def _tp_client(url: str, streams: int, frames: int, barrier: Any, out: Any) -> None:
    """One throughput client process: its streams spread over sessions of 50 streams."""
    import trio

    from atp_proto.frames import ConnectionClosed, MessageReceived, StreamReset

    body = prompt_body(CHUNK * frames)
    n_sessions = -(-streams // STREAMS_PER_SESSION)
    per = split(streams, n_sessions)
    tot = {"partials": 0, "finals": 0, "partial_bytes": 0, "errors": 0}
    first_error: list[str] = []
    marks: dict[str, float] = {}

    async def read(s: AtpSession, n: int) -> None:
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
        async with open_ws(url) as ws:
            s = AtpSession(ws)
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

    client_process(
        lambda: trio.run(start_together, per, session, barrier, marks),
        barrier,
        out,
        lambda: {
            **tot,
            "sessions": n_sessions,
            "start": marks["start"],
            "first": marks["first"],
            "end": marks["end"],
            "cpu": time.process_time() - marks["cpu0"],
            "error": first_error[0] if first_error else None,
        },
    )


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
    results, rcpu = collect(barrier, pipes, children, router_pid, "throughput")
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
        "syn_bytes": len(prompt_body(CHUNK * frames)),
        "seconds": wall,
        "frames_per_s": partials / wall,
        "steady_frames_per_s": partials / (end - first),
        "router_cpu_pct": 100 * rcpu / wall,
        "client_cpu_pct": 100 * sum(r["cpu"] for r in results) / wall,
    }
