"""Idle sessions: the router's RSS before and after N idle WebSocket sessions."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from .._harness import RouterProcess, _fork, _raise_nofile, _rss
from .settings import (
    GOAL_SESSIONS,
    HANDSHAKES_IN_FLIGHT,
)


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
