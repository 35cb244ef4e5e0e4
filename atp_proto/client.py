"""An ATP client on trio over WebSocket.

::

    async with atp_proto.client.connect("ws://127.0.0.1:7443/ws", token=tok) as client:
        async with client.stream("hello", task_type="qa", qos="gold") as stream:
            async for item in stream:          # Partial ... then Final
                print(item)
        final = await client.ask("hello")      # the same, collected

Each message is acknowledged (credit returned to the router) only when the caller takes
it from the iterator, so a slow consumer slows the router, and through it the adapters.
Errors from the router are raised as :class:`StreamError` with the spec's code.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import cbor2
import trio
import trio_websocket

from atp_proto.frames import (
    BudgetWindow,
    Connection,
    ConnectionClosed,
    Event,
    GoingAway,
    Limits,
    LocalProtocolError,
    MessageReceived,
    QoS,
    Role,
    StreamReset,
    decode_payload,
)

__all__ = ["Client", "Final", "Partial", "StreamError", "connect"]


@dataclass(frozen=True, slots=True)
class Partial:
    """A PARTIAL frame's payload (``agent.result.partial``)."""

    content: Any
    confidence: float | None
    payload: Any = field(repr=False, default=None)


@dataclass(frozen=True, slots=True)
class Final:
    """The FINAL frame: the answer and the telemetry ``{tokens, usd_micros, latency_ms,
    ...}`` (a draft-era ``usd`` is read as ``usd_micros``, ATP-BUDGET-006)."""

    content: Any
    confidence: float | None
    telemetry: Mapping[str, Any]
    payload: Any = field(repr=False, default=None)


class StreamError(Exception):
    """The router ended the stream (or the session) with an ERROR."""

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


_QOS = {"gold": QoS.GOLD, "silver": QoS.SILVER, "bronze": QoS.BRONZE}


class Stream:
    """One open stream; iterate to get :class:`Partial` items and then a :class:`Final`."""

    def __init__(self, client: Client, stream_id: int) -> None:
        self.client = client
        self.stream_id = stream_id
        # Unbounded here, bounded by credit: the router sends at most our initial window
        # per stream before we acknowledge, and we acknowledge only what is consumed. A
        # bounded channel would let one unconsumed stream stall every other stream.
        self._send, self._recv = trio.open_memory_channel[MessageReceived | StreamError](math.inf)
        self.finished = False

    def __aiter__(self) -> AsyncIterator[Partial | Final]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Partial | Final]:
        while not self.finished:
            try:
                item = await self._recv.receive()
            except trio.EndOfChannel:
                item = self.client.closed or StreamError("ECLOSED", "connection closed")
            if isinstance(item, StreamError):
                self.finished = True
                raise item
            yield self._convert(item)
            self.client._acknowledge(self.stream_id, item.size)

    def _convert(self, msg: MessageReceived) -> Partial | Final:
        body = decode_payload(msg.payload, msg.stream_id)
        content = body.get("content") if isinstance(body, dict) else body
        conf = body.get("confidence") if isinstance(body, dict) else None
        if msg.end_stream:
            self.finished = True
            telemetry = msg.ext.get("telemetry", {})
            telemetry = telemetry if isinstance(telemetry, Mapping) else {}
            if "usd" in telemetry and "usd_micros" not in telemetry:  # the seed's draft name
                telemetry = {**telemetry, "usd_micros": telemetry["usd"]}
            return Final(content, conf, telemetry, body)
        return Partial(content, conf, body)

    async def cancel(self) -> None:
        """Abandon the stream (RST)."""
        if not self.finished:
            self.finished = True
            self.client._conn.reset_stream(self.stream_id)
            await self.client._flush()


class Client:
    """A session with a router. Use :func:`connect`."""

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, *, text: bool, limits: Limits
    ) -> None:
        self._ws = ws
        self._text = text
        self._conn = Connection(Role.CLIENT, limits=limits, now=trio.current_time())
        self._streams: dict[int, Stream] = {}
        self._send_lock = trio.Lock()
        self.closed: StreamError | None = None
        self.draining = False
        self._pending_flush = trio.Event()

    async def _reader(self) -> None:
        ws, conn = self._ws, self._conn
        try:
            while True:
                message = await ws.get_message()
                now = trio.current_time()
                if isinstance(message, str):
                    events = conn.receive_text(message, now)
                else:
                    events = conn.receive_message(message, now)
                await self._dispatch(events)
                await self._flush()
                if conn.closed:
                    return
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            detail = f"{reason.code} {reason.reason or ''}".strip() if reason else "no close frame"
            err = StreamError("ECLOSED", f"connection closed ({detail})")
            self.closed = self.closed or err
        finally:
            final = self.closed or StreamError("ECLOSED", "connection closed")
            for st in list(self._streams.values()):
                st._send.send_nowait(final)
                st._send.close()
            self._streams.clear()

    async def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, MessageReceived):
                st = self._streams.get(ev.stream_id)
                if st is not None:
                    st._send.send_nowait(ev)
                    if ev.end_stream:
                        self._streams.pop(ev.stream_id, None)
            elif isinstance(ev, StreamReset):
                st = self._streams.pop(ev.stream_id, None)
                if st is not None:
                    st._send.send_nowait(StreamError(ev.code, ev.message, ev.retry_after_ms))
            elif isinstance(ev, ConnectionClosed):
                self.closed = StreamError(ev.code, ev.message)
            elif isinstance(ev, GoingAway):
                self.draining = True

    async def _flush(self) -> None:
        async with self._send_lock:
            for message in self._conn.data_to_send(trio.current_time()):
                try:
                    await self._ws.send_message(message)
                except trio_websocket.ConnectionClosed:
                    return

    def _acknowledge(self, stream_id: int, size: int) -> None:
        self._conn.acknowledge(stream_id, size)
        if self._conn.has_data_to_send():
            # best effort, from sync context: the reader flushes on its next turn
            self._pending_flush.set()

    @asynccontextmanager
    async def stream(
        self,
        prompt: str,
        *,
        task_type: str = "qa",
        qos: str = "silver",
        ttl: int = 0,
        window: BudgetWindow | None = None,
        meta: Mapping[str, Any] | None = None,
        content: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[Stream]:
        """Open a stream (SYN) for ``prompt``; yields a :class:`Stream` to iterate."""
        if self.closed is not None:
            raise self.closed
        if qos not in _QOS:
            raise ValueError("qos must be gold, silver or bronze")
        body = {
            "type": "agent.task",
            "content": {"prompt": prompt, **(dict(content) if content else {})},
        }
        full_meta = {"task_type": task_type, **(dict(meta) if meta else {})}
        try:
            sid = self._conn.open_stream(
                cbor2.dumps(body),
                qos=_QOS[qos],
                ttl=ttl,
                window=window,
                meta=full_meta,
                text=self._text,
                now=trio.current_time(),
            )
        except LocalProtocolError as exc:  # draining router, stream limit, closed session
            raise StreamError(str(exc.code), exc.message, exc.retry_after_ms) from None
        st = Stream(self, sid)
        self._streams[sid] = st
        await self._flush()
        try:
            yield st
        finally:
            if not st.finished and self.closed is None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await st.cancel()
            self._streams.pop(sid, None)

    async def ask(self, prompt: str, **kwargs: Any) -> Final:
        """Open a stream and return its :class:`Final` (partials are dropped)."""
        async with self.stream(prompt, **kwargs) as st:
            async for item in st:
                if isinstance(item, Final):
                    return item
        raise StreamError("EPROTO", "the stream ended without a FINAL")

    async def _flusher(self) -> None:
        while True:
            await self._pending_flush.wait()
            self._pending_flush = trio.Event()
            await self._flush()


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: str | None = None,
    text: bool = False,
    limits: Limits | None = None,
    connect_timeout: float = 10.0,
    capabilities: bool = True,
) -> AsyncIterator[Client]:
    """Open a session. ``text=True`` speaks the JSON mapping (like a browser).

    Raises:
        trio_websocket.HandshakeError: the router refused the handshake (e.g. 401).
    """
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else None
    limits = limits or Limits()
    async with trio_websocket.open_websocket_url(
        url,
        extra_headers=headers,
        connect_timeout=connect_timeout,
        max_message_size=limits.max_frame_size + 64 * 1024,
        message_queue_size=4,
    ) as ws:
        client = Client(ws, text=text, limits=limits)
        if capabilities:
            client._conn.send_capabilities(text=text)
            await client._flush()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            nursery.start_soon(client._flusher)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()


def frame_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)
