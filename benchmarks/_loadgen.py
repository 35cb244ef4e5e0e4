"""The load generator's WebSocket side, shared by the ``atp bench ws`` scenarios and the
picows baseline's client: a raw ATP session (the sans-IO :class:`~atp_proto.frames.Connection`
over the shared raw wsproto client, no client layers), the SYN body the scenarios send, and
the frame of a forked client process (sessions that start their load together with the
other client processes, a result or an error sent back to the parent)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = [
    "AtpSession",
    "RawWs",
    "client_process",
    "collect",
    "open_ws",
    "prompt_body",
    "split",
    "start_together",
]


def prompt_body(chars: int) -> bytes:
    import cbor2

    return cbor2.dumps({"type": "agent.task", "content": {"prompt": "x" * chars}})


class AtpSession:
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
        from atp_proto.messages import STREAMED_FINAL

        # meta.final_answer "streamed", as atp_proto.client sends by default (spec §15.5):
        # the FINAL does not repeat the answer the PARTIALs carried
        meta = {"task_type": "qa", "adapters": [adapter], **STREAMED_FINAL}
        sid = self.conn.open_stream(body, meta=meta, now=None)
        await self.flush()
        return sid


class RawWs:
    """The latency probe's client: the shared raw wsproto client
    (:func:`atp_proto.transports.ws_client.connect_ws`), no reader task. Reading happens
    in the probe's own task, so the figure holds the router's time and the kernel's, not a
    client library's task hop (trio-websocket's client hands each message through a
    channel from its reader task)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str) -> RawWs:
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
async def open_ws(url: str) -> Any:
    """A load-generator session on the shared raw client (no reader task: the load
    client reads in its own task), closed with a close handshake at the end."""
    ws = await RawWs.connect(url)
    try:
        yield ws
    finally:
        import trio

        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await ws.ws.close(1000, "")


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as whole numbers allow."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def start_together(
    per: Sequence[int],
    session: Callable[[int, Any, Any], Awaitable[None]],
    barrier: Any,
    marks: dict[str, float],
) -> None:
    """Run ``session(n, ready, go)`` for each ``n`` of ``per`` (one a WebSocket session);
    once every one has released ``ready`` (a ``trio.Semaphore``), meet the other client
    processes at ``barrier`` (a multiprocessing Barrier), mark ``cpu0`` and ``start``, and
    set ``go`` (a ``trio.Event``): every client's load starts at once."""
    import trio

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


def client_process(
    run: Callable[[], None], barrier: Any, out: Any, result: Callable[[], dict[str, Any]]
) -> None:
    """The body of a forked client process: ``run()`` the load, then send ``result()`` to
    the parent through the pipe ``out``; on any error abort ``barrier`` and send the error
    instead, so that the parent never hangs on a client that died."""
    try:
        run()
        out.send(result())
    except BaseException as exc:  # report, never hang the parent
        barrier.abort()
        out.send({"error": f"{type(exc).__name__}: {exc}"})


def collect(
    barrier: Any, pipes: Sequence[Any], children: Sequence[Any], server_pid: int, what: str
) -> tuple[list[dict[str, Any]], float]:
    """The parent's side of :func:`client_process`: meet the clients at ``barrier``, then
    gather each one's result (300 s at most) and the CPU seconds process ``server_pid``
    spent meanwhile; the children are joined (killed after 10 s) whatever happens."""
    from ._harness import _cpu_ticks

    try:
        barrier.wait(60)
        cpu0 = _cpu_ticks(server_pid)
        results = []
        for parent in pipes:
            if not parent.poll(300):
                raise RuntimeError(f"{what}: a client did not finish in 300 s")
            results.append(parent.recv())
        cpu = (_cpu_ticks(server_pid) - cpu0) / os.sysconf("SC_CLK_TCK")
    finally:
        for p in children:
            p.join(10)
            if p.is_alive():
                p.kill()
    return results, cpu
