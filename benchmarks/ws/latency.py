"""Latency: SYN→first PARTIAL with many paced streams open in the background."""

from __future__ import annotations

import time
from typing import Any

from .._harness import _dist_ms, _fork
from .._loadgen import AtpSession, RawWs, open_ws, prompt_body
from .settings import (
    CHUNK,
    PACE_MS,
    STREAMS_PER_SESSION,
)


def _background(url: str, streams: int, chunks: int, pipe: Any) -> None:
    """Keep ``streams`` paced streams open; report PARTIAL gaps between 'ready' and 'stop'."""
    import trio

    from atp_proto.frames import ConnectionClosed, MessageReceived, StreamReset

    body = prompt_body(CHUNK * chunks)
    n_sessions = -(-streams // STREAMS_PER_SESSION)
    st = {"seen": 0, "ended": 0, "frames": 0, "measuring": False}
    last: dict[tuple[int, int], float] = {}
    gaps: list[float] = []

    async def session(idx: int, n: int, all_seen: trio.Event) -> None:
        async with open_ws(url) as ws:
            s = AtpSession(ws)
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
        body = prompt_body(CHUNK)
        lat: list[float] = []
        errors: list[str] = []

        async def main() -> None:
            ws = await RawWs.connect(url)
            try:
                s = AtpSession(ws)
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
