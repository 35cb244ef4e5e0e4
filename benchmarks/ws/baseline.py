"""The baseline: a bare trio-websocket echo server and client, 200-byte messages."""

from __future__ import annotations

import contextlib
import time
from importlib import metadata
from typing import Any

from .._harness import _fork
from .settings import (
    CHUNK,
    WINDOW,
)


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
