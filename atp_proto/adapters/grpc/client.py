"""The trio client of ``atp.adapter.v1``: :class:`GrpcAdapter`.

The adapter is the router-facing half of the gRPC client (:mod:`atp_proto.adapters.grpc`
has the whole theory of operation): the URL, who owns the connection tasks, connecting
with backoff and TLS, unary calls (Estimate, Health) and the server stream with
transparent retries of calls the server refused unprocessed.

* **Errors** are :class:`AdapterError` with ATP codes (:data:`.status.GRPC_TO_ATP`);
  ``streamed`` tells whether this call already yielded a chunk.
* **Reconnect**: a dropped connection fails its in-flight calls (EAGENTDOWN); the next
  call reconnects at once. A failed connect starts exponential backoff with jitter;
  during the backoff calls fail fast with EAGENTDOWN and ``retry_after_ms``.
* **TLS**: ``grpcs://HOST:PORT`` (trio.SSLStream, ALPN ``h2``, system trust store, or
  ``?ca=FILE``; ``?insecure=1`` skips verification for tests only).

Task ownership (no task outlives its owner; there is no third way):

* ``async with GrpcAdapter(...) as a:`` — connection tasks run in a nursery owned by the
  ``async with`` block; leaving it closes the connection.
* ``await nursery.start(adapter.run)`` — the same, in a nursery the caller owns (the
  router's, through :func:`atp_proto.adapters.registry.start`); cancelling that nursery
  closes the adapter.

A call on an adapter with neither owner raises ``RuntimeError`` at once.
"""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlsplit

import trio

from atp_proto.frames import ErrorCode

from .._base import AdapterError, Chunk, CostEstimate, Health, TaskRequest
from ..proto import codec
from ._call import Call
from ._h2 import H2Channel
from .status import GrpcStatus, RpcError, grpc_error, method_path

__all__ = ["ChunkStream", "GrpcAdapter", "HandshakeError"]

T = TypeVar("T")

_ESTIMATE = method_path("Estimate").encode()
_STREAM = method_path("Stream").encode()
_HEALTH = method_path("Health").encode()

#: resends of a call the server refused unprocessed (REFUSED_STREAM, GOAWAY)
_TRANSPARENT_RETRIES = 3


class GrpcAdapter:
    """An :class:`~atp_proto.adapters.Adapter` backed by a remote ``atp.adapter.v1``
    service. See the module docstring for task ownership."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 5.0,
        estimate_timeout: float | None = 10.0,
        health_timeout: float | None = 5.0,
        stream_timeout: float | None = None,
        window: int = 65535,
        connection_window: int = 1 << 24,
        max_message_size: int = 4 << 20,
        backoff_initial: float = 0.1,
        backoff_multiplier: float = 1.6,
        backoff_max: float = 10.0,
        backoff_jitter: float = 0.2,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.connect_timeout = connect_timeout
        self.estimate_timeout = estimate_timeout
        self.health_timeout = health_timeout
        self.stream_timeout = stream_timeout
        self.window = window
        self.connection_window = connection_window
        self.max_message_size = max_message_size
        self.backoff_initial = backoff_initial
        self.backoff_multiplier = backoff_multiplier
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        authority = host if ":" not in host else f"[{host}]"
        self._authority = f"{authority}:{port}".encode()
        self._conn: H2Channel | None = None
        self._conns: set[H2Channel] = set()
        self._connect_lock = trio.Lock()
        self._failed_attempts = 0
        self._retry_at = -math.inf
        self._last_connect_error = ""
        self._nursery: trio.Nursery | None = None
        self._owner_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._closed = False
        self.connects = 0  #: successful connections made (for metrics and tests)

    @classmethod
    def from_url(cls, name: str, url: str, **kwargs: Any) -> GrpcAdapter:
        """``grpc://HOST:PORT`` or ``grpcs://HOST:PORT[?ca=FILE&insecure=1&timeout_s=N]``.

        Raises:
            ValueError: malformed URL (the message says why).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("grpc", "grpcs"):
            raise ValueError(f"not a gRPC adapter URL: {url!r} (grpc://HOST:PORT)")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        if not parts.hostname or port is None:
            raise ValueError(f"gRPC adapter URL needs HOST:PORT: {url!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"gRPC adapter URL takes no path: {url!r}")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - {"ca", "insecure", "timeout_s", "server_hostname"}
        if unknown:
            raise ValueError(f"unknown option(s) in {url!r}: {', '.join(sorted(unknown))}")
        if parts.scheme == "grpcs":
            ctx = ssl.create_default_context(cafile=query.get("ca"))
            if query.get("insecure") in ("1", "true", "yes"):
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            kwargs.setdefault("ssl_context", ctx)
        elif "ca" in query or "insecure" in query:
            raise ValueError("ca= and insecure= need grpcs://")
        if "timeout_s" in query:
            try:
                kwargs.setdefault("estimate_timeout", float(query["timeout_s"]))
            except ValueError:
                raise ValueError(f"bad timeout_s in {url!r}") from None
        if "server_hostname" in query:
            kwargs.setdefault("server_hostname", query["server_hostname"])
        return cls(name, parts.hostname, port, **kwargs)

    def __repr__(self) -> str:
        scheme = "grpcs" if self.ssl_context else "grpc"
        return f"GrpcAdapter({self.name!r}, '{scheme}://{self.host}:{self.port}')"

    # ------------------------------------------------------------------ ownership

    async def __aenter__(self) -> GrpcAdapter:
        if self._nursery is not None:
            raise RuntimeError(f"{self!r} already has an owner")
        cm = trio.open_nursery()
        self._nursery = await cm.__aenter__()
        self._owner_cm = cm
        return self

    async def __aexit__(self, *exc: Any) -> None:
        cm, self._owner_cm = self._owner_cm, None
        try:
            await self.aclose()
        finally:
            self._nursery = None
            if cm is not None:
                await cm.__aexit__(*exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection tasks in the caller's nursery: ``await nursery.start(a.run)``.
        Runs until cancelled; then closes the adapter."""
        if self._nursery is not None:
            raise RuntimeError(f"{self!r} already has an owner")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Close all connections (in-flight calls fail with EAGENTDOWN). Idempotent."""
        self._closed = True
        conns = list(self._conns)
        for conn in conns:
            conn.scope.cancel()
        for conn in conns:
            await conn.done.wait()
        self._conns.clear()
        self._conn = None

    # ------------------------------------------------------------------ connecting

    def _down(
        self, message: str, streamed: bool = False, retry_after_ms: int | None = None
    ) -> AdapterError:
        return AdapterError(
            ErrorCode.EAGENTDOWN,
            message,
            adapter=self.name,
            streamed=streamed,
            retry_after_ms=retry_after_ms,
        )

    def _owner(self) -> trio.Nursery:
        """The nursery the connection tasks run in (ownership is mandatory: no task
        outlives its owner, nothing is fire-and-forget).

        Raises:
            RuntimeError: the adapter is used without ``async with`` or ``nursery.start(run)``.
        """
        if self._nursery is None:
            raise RuntimeError(
                f"{self!r} has no owner: use it inside `async with adapter:` or after "
                "`await nursery.start(adapter.run)` (atp_proto.adapters.registry.start does this)"
            )
        return self._nursery

    async def _connection(self) -> H2Channel:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._closed:
            raise self._down("adapter client is closed")
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._closed:
                raise self._down("adapter client is closed")
            wait = self._retry_at - trio.current_time()
            if wait > 0:
                raise self._down(
                    f"cannot connect to {self.host}:{self.port} ({self._last_connect_error}); "
                    f"next attempt in {wait:.2f}s",
                    retry_after_ms=math.ceil(wait * 1000),
                )
            try:
                conn = await self._connect(self._owner())
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, HandshakeError) as exc:
                self._failed_attempts += 1
                delay = min(
                    self.backoff_max,
                    self.backoff_initial * self.backoff_multiplier ** (self._failed_attempts - 1),
                )
                delay *= random.uniform(1 - self.backoff_jitter, 1 + self.backoff_jitter)
                self._retry_at = trio.current_time() + delay
                why = (
                    "timed out"
                    if isinstance(exc, trio.TooSlowError)
                    else str(exc) or type(exc).__name__
                )
                self._last_connect_error = why
                raise self._down(
                    f"cannot connect to {self.host}:{self.port}: {why}",
                    retry_after_ms=math.ceil(delay * 1000),
                ) from None
            self._failed_attempts = 0
            self._retry_at = -math.inf
            self._conn = conn
            self.connects += 1
            return conn

    async def _connect(self, owner: trio.Nursery) -> H2Channel:
        label = f"grpc {self.name} {self.host}:{self.port}"
        with trio.fail_after(self.connect_timeout):
            tcp = await trio.open_tcp_stream(self.host, self.port)
            stream: trio.abc.Stream = tcp
            try:
                if self.ssl_context is not None:
                    tls = trio.SSLStream(
                        tcp, self.ssl_context, server_hostname=self.server_hostname
                    )
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError as exc:
                        raise HandshakeError(
                            f"TLS handshake failed: {exc.__cause__ or exc}"
                        ) from None
                    if tls.selected_alpn_protocol() != "h2":
                        raise HandshakeError("server did not agree to HTTP/2 (ALPN h2)")
                    stream = tls
                conn = H2Channel(
                    stream,
                    authority=self._authority,
                    scheme=b"https" if self.ssl_context else b"http",
                    window=self.window,
                    connection_window=self.connection_window,
                    max_message_size=self.max_message_size,
                    label=label,
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._conns.add(conn)

            async def run() -> None:
                try:
                    await conn.run()
                finally:
                    self._conns.discard(conn)

            owner.start_soon(run, name=label)
            conn.kick()
            # the server's SETTINGS (its MAX_CONCURRENT_STREAMS) before the first call
            try:
                await conn.settings_received.wait()
            except BaseException:
                conn.scope.cancel()
                raise
        if conn.dead is not None:
            raise HandshakeError(conn.dead)
        return conn

    # ------------------------------------------------------------------ calls

    async def _open(self, method: bytes, payload: bytes, timeout: float | None) -> Call:
        conn = await self._connection()
        return await conn.start_call(method, payload, timeout)

    async def _unary(self, method: bytes, payload: bytes, timeout: float | None) -> bytes:
        call: Call | None = None
        attempts = 0
        try:
            with trio.move_on_after(timeout if timeout is not None else math.inf) as cs:
                while True:
                    call = await self._open(method, payload, timeout)
                    try:
                        reply = await call.recv()
                        if reply is None:
                            raise RpcError(GrpcStatus.INTERNAL, "no reply message")
                        end = await call.recv()
                    except RpcError as exc:
                        if exc.transparent and attempts < _TRANSPARENT_RETRIES:
                            attempts += 1  # the server never saw it: safe to resend
                            call.close()
                            continue
                        raise
                    if end is not None:
                        raise RpcError(GrpcStatus.INTERNAL, "more than one reply message")
                    return reply
        except RpcError as exc:
            raise grpc_error(
                exc.status,
                exc.message,
                adapter=self.name,
                streamed=False,
                retry_after_ms=exc.retry_after_ms,
            ) from None
        finally:
            if call is not None:
                call.close()
        assert cs.cancelled_caught
        raise AdapterError(ErrorCode.ETIMEOUT, f"no reply within {timeout:.3f}s", adapter=self.name)

    @staticmethod
    def _timeout(request: TaskRequest, default: float | None) -> float | None:
        if request.deadline_ms is not None:
            return max(0.001, request.deadline_ms / 1000)
        return default

    def _decode_reply(self, decode: Callable[[bytes], T], reply: bytes, what: str) -> T:
        """A unary reply decoded; a malformed one is the adapter's failure (EAGENTDOWN)."""
        try:
            return decode(reply)
        except codec.DecodeError as exc:
            raise AdapterError(
                ErrorCode.EAGENTDOWN, f"bad {what} reply: {exc}", adapter=self.name
            ) from None

    async def estimate(self, request: TaskRequest) -> CostEstimate:
        payload = codec.encode_task_request(request)
        timeout = self._timeout(request, self.estimate_timeout)
        reply = await self._unary(_ESTIMATE, payload, timeout)
        return self._decode_reply(codec.decode_estimate, reply, "Estimate")

    async def health(self) -> Health:
        reply = await self._unary(_HEALTH, b"", self.health_timeout)
        return self._decode_reply(codec.decode_health, reply, "Health")

    def stream(self, request: TaskRequest) -> ChunkStream:
        """Chunks as the server sends them; leaving early (``aclose``) cancels the call.
        The iterator's :meth:`ChunkStream.ready` says whether its next chunk is already
        here (a caller bounding each wait, :class:`ResilientAdapter`, opens no timer)."""
        box = _CallBox()
        return ChunkStream(self._chunks(request, box), box)

    async def _chunks(self, request: TaskRequest, holder: _CallBox) -> AsyncGenerator[Chunk, None]:
        payload = codec.encode_task_request(request)
        timeout = self._timeout(request, self.stream_timeout)
        n = 0
        call: Call | None = None
        attempts = 0
        # The deadline applies to each wait, never across a ``yield``: a cancel scope
        # must not stay open while the consumer's code runs.
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        method = _STREAM
        decode = codec.decode_chunk
        try:
            while True:
                conn = self._conn
                if (
                    conn is not None
                    and conn.usable
                    and conn.starts_now(len(payload))
                    and trio.current_time() < deadline
                ):
                    # nothing to wait for (the common case): no timer to open and close
                    call = await conn.start_call(method, payload, timeout)
                else:
                    with trio.move_on_at(deadline):
                        call = await self._open(method, payload, timeout)
                if call is None:
                    raise self._stream_timeout(timeout, n)
                holder.call = call
                try:
                    while True:
                        if deadline == math.inf or (call.inbox and trio.current_time() < deadline):
                            # no deadline, or a message already here (recv will not wait:
                            # no cancel scope to open and close, once per chunk)
                            msg = await call.recv()
                        else:
                            msg = b""
                            with trio.move_on_at(deadline) as cs:
                                msg = await call.recv()
                            if cs.cancelled_caught:
                                raise self._stream_timeout(timeout, n)
                        if msg is None:
                            return
                        try:
                            chunk = decode(msg)
                        except codec.DecodeError as exc:
                            raise RpcError(GrpcStatus.INTERNAL, f"bad StreamChunk: {exc}") from None
                        n += 1
                        yield chunk
                except RpcError as exc:
                    if exc.transparent and n == 0 and attempts < _TRANSPARENT_RETRIES:
                        attempts += 1  # the server never saw it: safe to resend
                        call.close()
                        call = holder.call = None
                        continue
                    raise
        except RpcError as exc:
            raise grpc_error(
                exc.status,
                exc.message,
                adapter=self.name,
                streamed=n > 0,
                retry_after_ms=exc.retry_after_ms,
            ) from None
        finally:
            holder.call = None
            if call is not None:
                call.close()

    def _stream_timeout(self, timeout: float | None, n: int) -> AdapterError:
        return AdapterError(
            ErrorCode.ETIMEOUT,
            f"stream not finished within {timeout}s",
            adapter=self.name,
            streamed=n > 0,
        )


class _CallBox:
    """The call a stream's generator has in progress (None before and after), shared
    with its :class:`ChunkStream` without a reference cycle: a stream left without
    ``aclose`` is freed, and its generator finalized (the call reset), at once."""

    __slots__ = ("call",)

    def __init__(self) -> None:
        self.call: Call | None = None


class ChunkStream:
    """The iterator :meth:`GrpcAdapter.stream` returns: its generator's chunks, and
    :meth:`ready`. An async iterator with ``aclose`` (what ``async for`` and
    ``aclosing`` need), not an async generator."""

    __slots__ = ("_box", "_gen")

    #: ``aclose`` never checkpoints: the generator's cleanup is ``Call.close`` (no wait),
    #: so a caller need not shield it from cancellation (:class:`ResilientAdapter` opens
    #: no cancel scope for it; tests/adapters/test_grpc_chunk_stream.py checks it)
    aclose_checkpoints: ClassVar[bool] = False

    def __init__(self, gen: AsyncGenerator[Chunk, None], box: _CallBox) -> None:
        self._gen = gen
        self._box = box

    def __aiter__(self) -> ChunkStream:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    def ready(self) -> bool:
        """Whether the next ``__anext__`` returns without waiting for the network: a
        message of the call is already received, or the call ended OK (the iteration
        stops). False before the call is open, and while nothing is here."""
        call = self._box.call
        if call is None:
            return False
        if call.inbox:
            return True
        outcome = call.outcome
        return call.ended and outcome is not None and outcome.status == GrpcStatus.OK


class HandshakeError(Exception):
    """TLS / ALPN / HTTP/2 preface failure while connecting."""
