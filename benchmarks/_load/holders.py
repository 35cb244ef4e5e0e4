"""Connections that hold: slow readers (issue 14 item 3) and open streams (item 4).

* :func:`slow_readers`: ``n`` WebSocket clients, each granting a small credit window
  (``Limits.initial_window``) in its CAPABILITIES, opening one stream whose answer is far
  larger than that window, then **never reading again**: the router must stop at the
  credit and the backpressure must reach the adapter (gRPC flow control) instead of the
  router's memory.
* :func:`open_streams`: ``n`` streams kept open at once (an adapter that answers only
  after a long delay), ``per_session`` to a session, to measure memory per open stream.

Both run in a forked process (:func:`hold`) that reports ``("ready", info)`` once every
connection is set up, then holds until the parent sends anything, then closes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

HANDSHAKES_IN_FLIGHT = 100


async def _slow_readers(url: str, n: int, prompt_bytes: int, window: int, adapter: str) -> Any:
    import trio

    from atp_proto.frames import CapabilitiesReceived, Connection, Limits, Role
    from atp_proto.messages import task_body
    from atp_proto.transports.ws_client import connect_ws

    body = task_body("s" * prompt_bytes, None)
    held: list[Any] = []
    failures: list[str] = []
    sem = trio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def one() -> None:
        async with sem:
            try:
                ws = await connect_ws(url, max_message_size=8 << 20)
                conn = Connection(Role.CLIENT, limits=Limits(initial_window=window), now=0.0)
                conn.send_capabilities()
                conn.open_stream(body, meta={"task_type": "qa", "adapters": [adapter]}, now=None)
                for message in conn.data_to_send():
                    await ws.send(message)
                while True:  # the router's CAPABILITIES: the session is up; stop reading
                    msg = await ws.receive()
                    if not isinstance(msg, bytes):
                        raise RuntimeError(f"unexpected message {msg!r:.80}")
                    if any(
                        isinstance(e, CapabilitiesReceived)
                        for e in conn.receive_message(msg, trio.current_time())
                    ):
                        break
                held.append(ws)
            except Exception as exc:  # counted and reported, the others go on
                failures.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return held, {"held": len(held), "failures": failures[:3], "open_s": time.perf_counter() - t0}


async def _open_streams(url: str, n: int, per_session: int, adapter: str) -> Any:
    import trio

    from atp_proto.frames import CapabilitiesReceived, Connection, Role
    from atp_proto.messages import task_body
    from atp_proto.transports.ws_client import connect_ws

    body = task_body("open", None)
    opened = [0]
    held: list[Any] = []
    failures: list[str] = []
    sem = trio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def session(k: int) -> None:
        async with sem:
            try:
                ws = await connect_ws(url, max_message_size=8 << 20)
                conn = Connection(Role.CLIENT, now=0.0)
                conn.send_capabilities()
                for _ in range(k):
                    conn.open_stream(
                        body, meta={"task_type": "qa", "adapters": [adapter]}, now=None
                    )
                for message in conn.data_to_send():
                    await ws.send(message)
                while True:
                    msg = await ws.receive()
                    if not isinstance(msg, bytes):
                        raise RuntimeError(f"unexpected message {msg!r:.80}")
                    if any(
                        isinstance(e, CapabilitiesReceived)
                        for e in conn.receive_message(msg, trio.current_time())
                    ):
                        break
                held.append(ws)
                opened[0] += k
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    sizes = [min(per_session, n - i) for i in range(0, n, per_session)]
    async with trio.open_nursery() as nursery:
        for k in sizes:
            nursery.start_soon(session, k)
    return held, {
        "sessions": len(held),
        "streams": opened[0],
        "failures": failures[:3],
        "open_s": time.perf_counter() - t0,
    }


def hold(kind: str, args: tuple[Any, ...], pipe: Any) -> None:
    """Process entry point: open, report ``("ready", info)``, hold until told, close."""
    import trio

    from .._harness import _raise_nofile

    _raise_nofile()
    table: dict[str, Callable[..., Awaitable[Any]]] = {
        "slow-readers": _slow_readers,
        "open-streams": _open_streams,
    }
    fn = table[kind]

    async def main() -> None:
        held, info = await fn(*args)
        pipe.send(("ready", info))
        await trio.to_thread.run_sync(pipe.recv)
        for ws in held:
            # closing what the router may have closed already
            with contextlib.suppress(Exception):
                ws.stream.socket.close()

    try:
        trio.run(main)
    except BaseException as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))


class Holder:
    """The parent's handle on a :func:`hold` process (context manager)."""

    def __init__(self, kind: str, *args: Any, timeout: float = 300) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=hold, args=(kind, args, child), daemon=True)
        self.proc.start()
        if not self.pipe.poll(timeout):
            self.close()
            raise RuntimeError(f"{kind}: the connections were not open within {timeout:g} s")
        what, self.info = self.pipe.recv()
        if what != "ready":
            self.close()
            raise RuntimeError(f"{kind}: {self.info}")

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.pipe.send("close")
            self.proc.join(20)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
