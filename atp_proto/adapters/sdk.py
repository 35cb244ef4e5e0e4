"""Adapter SDK for vendors: serve one async class as an ``atp.adapter.v1`` gRPC service.

A vendor writes::

    from atp_proto.adapters import Chunk, CostEstimate, TaskRequest

    class MyModel:
        async def estimate(self, req: TaskRequest) -> CostEstimate: ...
        async def stream(self, req: TaskRequest):          # async generator of Chunk
            yield Chunk("hello", confidence=0.8, tokens=3, usd_micros=1, final=True,
                        finish_reason="stop")
        async def health(self) -> Health: ...               # optional

and runs ``atp adapter serve mymodule:MyModel --listen 127.0.0.1:7070``.

The server runs on asyncio with grpclib. The SDK handles for the vendor:

* **Health**: if the class has no ``health``, the reply is READY (BUSY at capacity,
  DRAINING while shutting down) with the p95 latency and error rate measured over the
  last 256 calls. If it has one, its reply is used and unset (zero) p95 / error rate /
  capacity are filled in from the measurements.
* **Validation**: an empty prompt, a negative ``max_tokens`` or content/meta that is not a
  JSON object are refused with INVALID_ARGUMENT and a message saying which.
* **Errors**: :class:`AdapterError` raised by vendor code becomes the matching gRPC status
  (:data:`ATP_TO_GRPC`) with the vendor's message, and its ``retry_after_ms`` a
  ``google.rpc.RetryInfo`` in the ``grpc-status-details-bin`` trailer (ATP-ADAPT-014);
  any other exception becomes INTERNAL with a generic message (the traceback is
  logged, not sent).
* **Backpressure**: each chunk is sent only when HTTP/2 flow control allows it, so the
  vendor's generator is pulled at the pace of the reader.
* **Deadlines and cancellation**: the ``grpc-timeout`` header becomes
  ``TaskRequest.deadline_ms``; when the deadline passes or the client cancels, the
  vendor's coroutine is cancelled (``asyncio.CancelledError``) and its generator closed.
* **Graceful shutdown** on SIGTERM / SIGINT: stop accepting connections, refuse new calls
  with UNAVAILABLE ("draining"), let in-flight calls finish for up to ``grace`` seconds,
  then cancel what is left and call the vendor's ``aclose()`` if it has one.
* **Coalesced writes** (:mod:`.grpc.server`): HTTP/2 frames written during one
  event-loop iteration leave in one ``send`` (at most 4 KiB are held back), instead of
  one system call per chunk.
  A generator that blocks the event loop (CPU work without an ``await``) delays the
  chunks it already yielded until it awaits; such code starves every other call anyway.
* **Probe**: the Health reply carries an ``atp-calls-in-flight`` header, the number of
  Estimate / Stream calls whose handling has not finished (ATP-ADAPT-024).
* **Concurrency cap** (optional ``max_concurrency``): calls beyond it are refused with
  RESOURCE_EXHAUSTED (the router maps it to EWINDOW_AGENT and backs off).
* **Estimate reuse** (optional ``estimate_max_age_ms``, default 0: never): the
  ``max_age_ms`` sent with every Estimate reply whose vendor code left
  ``CostEstimate.max_age_ms`` at 0. A router may then answer later streams' preflight
  from that reply for that long, for tasks of the same type, ``max_tokens`` and
  input-size class (ATP-BUDGET-018): set it only when the estimate holds for all of
  them. A vendor that knows better sets ``CostEstimate.max_age_ms`` per reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from ._base import AdapterError, Chunk, CostEstimate, Health, TaskRequest
from .builtin import ASYNCIO, behaviour_adapter
from .grpc.server import CoalescingServer, RawCodec, RetryInfoCodec, grpc_error_of
from .grpc.status import ATP_TO_GRPC, method_path
from .proto import codec

__all__ = [
    "ATP_TO_GRPC",
    "BUILTIN_TARGETS",
    "AdapterServer",
    "BuiltinTarget",
    "VendorAdapter",
    "load_target",
    "serve",
]

log = logging.getLogger("atp.adapter")

#: statuses caused by the caller: they do not count as adapter errors in Health
_CALLER_FAULTS = {Status.INVALID_ARGUMENT, Status.CANCELLED, Status.PERMISSION_DENIED}


@runtime_checkable
class VendorAdapter(Protocol):
    """What a vendor implements (``health`` and ``aclose`` are optional)."""

    async def estimate(self, request: TaskRequest) -> CostEstimate: ...

    def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]: ...


#: ``Estimate.max_age_ms`` is a uint32
_MAX_AGE_MS = 2**32 - 1


class _Stats:
    """Latency and outcome windows for the Health reply."""

    def __init__(self, size: int = 256) -> None:
        self.stream_ms: deque[float] = deque(maxlen=size)
        self.estimate_ms: deque[float] = deque(maxlen=size)
        self.outcomes: deque[bool] = deque(maxlen=size)  # True = failed

    def record(self, kind: str, ms: float, failed: bool) -> None:
        (self.stream_ms if kind == "stream" else self.estimate_ms).append(ms)
        self.outcomes.append(failed)

    def p95(self) -> float:
        window = self.stream_ms or self.estimate_ms
        if not window:
            return 0.0
        ordered = sorted(window)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def error_rate(self) -> float:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else 0.0


class AdapterServer:
    """Serves one vendor object over gRPC (grpclib, asyncio).

    Use :meth:`start` then :meth:`wait_stopped`, or :func:`serve` which also installs the
    signal handlers.
    """

    def __init__(
        self,
        adapter: Any,
        *,
        name: str = "",
        grace: float = 10.0,
        max_concurrency: int = 0,
        estimate_max_age_ms: int = 0,
    ) -> None:
        for method in ("estimate", "stream"):
            if not callable(getattr(adapter, method, None)):
                raise TypeError(f"adapter {adapter!r} has no {method}() method")
        if not 0 <= estimate_max_age_ms <= _MAX_AGE_MS:
            raise ValueError(f"estimate_max_age_ms must be 0..{_MAX_AGE_MS}")
        self.estimate_max_age_ms = estimate_max_age_ms
        self.adapter = adapter
        self.name = name or getattr(adapter, "name", "") or type(adapter).__name__
        self.grace = grace
        self.max_concurrency = max_concurrency
        self.stats = _Stats()
        self.in_flight = 0
        self.draining = False
        self.port: int | None = None
        self._server: Server | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = asyncio.Event()
        self._vendor_health = callable(getattr(adapter, "health", None))

    # ------------------------------------------------------------------ grpclib plumbing

    def __mapping__(self) -> dict[str, Handler]:
        return {
            method_path("Estimate"): Handler(self._estimate, Cardinality.UNARY_UNARY, bytes, bytes),
            method_path("Stream"): Handler(self._stream, Cardinality.UNARY_STREAM, bytes, bytes),
            method_path("Health"): Handler(self._health, Cardinality.UNARY_UNARY, bytes, bytes),
        }

    async def start(self, host: str = "127.0.0.1", port: int = 7070) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = CoalescingServer(
            [self], codec=RawCodec(), status_details_codec=RetryInfoCodec()
        )
        await self._server.start(host, port)
        listener: Any = self._server._server
        sockets = listener.sockets if listener is not None else ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        # said once, by whoever runs it: serve() (or its on_listening, atp adapter serve)
        log.debug("adapter %s listening on %s:%s", self.name, host, self.port)
        return self.port

    async def drain(self) -> None:
        """Graceful shutdown: stop accepting, let in-flight calls finish within
        ``grace`` seconds, cancel the rest, close the vendor object."""
        if self._server is None or self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        log.info(
            "adapter %s draining (%d in flight, grace %.1fs)", self.name, self.in_flight, self.grace
        )
        # grpclib has no public "stop accepting"; its asyncio server object does.
        listener = getattr(self._server, "_server", None)
        if listener is not None:
            listener.close()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self.grace)
        except TimeoutError:
            log.warning(
                "adapter %s: grace period over, cancelling %d call(s)", self.name, self.in_flight
            )
        self._server.close()
        await self._server.wait_closed()
        aclose = getattr(self.adapter, "aclose", None)
        if callable(aclose):
            try:
                await aclose()
            except Exception:
                log.exception("adapter %s: aclose() failed", self.name)
        log.info("adapter %s stopped", self.name)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ------------------------------------------------------------------ request handling

    def _admit(self) -> None:
        if self.draining:
            raise GRPCError(Status.UNAVAILABLE, "adapter is draining")
        if self.max_concurrency and self.in_flight >= self.max_concurrency:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, "adapter at capacity")
        self.in_flight += 1
        self._idle.clear()

    def _release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def _parse(self, data: bytes | None, stream: Stream[Any, Any]) -> TaskRequest:
        if data is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "missing request message")
        deadline_ms: int | None = None
        if stream.deadline is not None:
            deadline_ms = max(0, int(stream.deadline.time_remaining() * 1000))
        try:
            req = codec.decode_task_request(data, deadline_ms=deadline_ms)
        except codec.DecodeError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"bad request: {exc}") from None
        if not req.prompt:
            raise GRPCError(Status.INVALID_ARGUMENT, "task.prompt must not be empty")
        if req.max_tokens is not None and req.max_tokens < 0:
            raise GRPCError(Status.INVALID_ARGUMENT, "task.max_tokens must not be negative")
        return req

    def _failed(self, kind: str, req: TaskRequest | None, exc: BaseException) -> GRPCError:
        rid = req.request_id if req else ""
        if isinstance(exc, GRPCError):
            return exc
        if isinstance(exc, AdapterError):
            log.info("adapter %s %s %s failed: %s: %s", self.name, kind, rid, exc.code, exc.message)
            return grpc_error_of(exc)
        log.error("adapter %s %s %s: error in adapter code", self.name, kind, rid, exc_info=exc)
        return GRPCError(Status.INTERNAL, f"internal error in adapter {self.name}")

    @contextlib.contextmanager
    def _call_scope(self, kind: str) -> Iterator[None]:
        """The prologue and epilogue of every Estimate / Stream call: admission
        (draining, ``max_concurrency``), the in-flight count, and the outcome and latency
        recorded for Health. A cancelled call (client gone, deadline passed) is the
        caller's doing and is not recorded."""
        t0 = time.perf_counter()
        status = Status.OK
        self._admit()
        try:
            yield
        except GRPCError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = Status.CANCELLED
            raise
        finally:
            self._release()
            self._record(kind, t0, status)

    async def _estimate(self, stream: Stream[Any, Any]) -> None:
        with self._call_scope("estimate"):
            req = self._parse(await stream.recv_message(), stream)
            try:
                est = await self.adapter.estimate(req)
                if not isinstance(est, CostEstimate):
                    raise TypeError(f"estimate() returned {type(est).__name__}, not CostEstimate")
                if not 0 <= est.max_age_ms <= _MAX_AGE_MS:  # a uint32 on the wire
                    raise ValueError(f"estimate() max_age_ms {est.max_age_ms} is not 0..2^32-1")
                if not est.max_age_ms and self.estimate_max_age_ms:
                    est = replace(est, max_age_ms=self.estimate_max_age_ms)
            except Exception as exc:
                raise self._failed("estimate", req, exc) from None
            await stream.send_message(codec.encode_estimate(est))

    async def _stream(self, stream: Stream[Any, Any]) -> None:
        with self._call_scope("stream"):
            req = self._parse(await stream.recv_message(), stream)
            log.debug("adapter %s stream %s start", self.name, req.request_id)
            chunks = self.adapter.stream(req)
            try:
                async for chunk in chunks:
                    if not isinstance(chunk, Chunk):
                        raise TypeError(f"stream() yielded {type(chunk).__name__}, not Chunk")
                    await stream.send_message(codec.encode_chunk(chunk))
            except GRPCError:
                raise
            except Exception as exc:
                raise self._failed("stream", req, exc) from None
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()

    def _record(self, kind: str, t0: float, status: Status) -> None:
        if status in _CALLER_FAULTS:
            return
        self.stats.record(kind, (time.perf_counter() - t0) * 1000, status != Status.OK)

    async def health(self) -> Health:
        """The Health reply (vendor's if it has one, completed by measurements)."""
        measured_capacity = (
            max(0, self.max_concurrency - self.in_flight) if self.max_concurrency else 0
        )
        status = "READY"
        if self.max_concurrency and self.in_flight >= self.max_concurrency:
            status = "BUSY"
        p95, err, cap = self.stats.p95(), self.stats.error_rate(), measured_capacity
        if self._vendor_health:
            try:
                h = await self.adapter.health()
                status = h.status if h.status in codec.STATUS_VALUES else "DOWN"
                p95 = h.p95_ms or p95
                err = h.error_rate or err
                cap = h.capacity or cap
            except Exception:
                log.exception("adapter %s: health() failed", self.name)
                status = "DOWN"
        if self.draining:
            status = "DRAINING"
        return Health(status=status, p95_ms=p95, error_rate=err, capacity=cap)

    async def _health(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        reply = codec.encode_health(await self.health())
        # the calls-in-flight probe (ATP-ADAPT-024): Estimate / Stream handlers not yet
        # finished, a vendor coroutine that ignores its cancellation included, so the
        # conformance suite can see that work stops (ATP-ADAPT-008)
        await stream.send_initial_metadata(metadata={"atp-calls-in-flight": str(self.in_flight)})
        await stream.send_message(reply)


# ---------------------------------------------------------------------- loading & serving


def _openai(options: Mapping[str, str]) -> Any:
    from .openai_bridge import OpenAIBridge

    return OpenAIBridge.from_options(options)


@dataclass(frozen=True)
class BuiltinTarget:
    """An adapter ``atp adapter serve NAME`` knows by name (no ``MODULE:CLASS``)."""

    factory: Callable[[Mapping[str, str]], Any]
    description: str


#: the adapters served by name: the builtin behaviours (waiting on asyncio under this
#: server, otherwise the very classes of ``builtin:``) and the OpenAI bridge
BUILTIN_TARGETS: dict[str, BuiltinTarget] = {
    "echo": BuiltinTarget(
        lambda o: behaviour_adapter("echo", o, waits=ASYNCIO),
        "answers with the prompt "
        "(options: latency_ms chunks usd_per_1k confidence fail fail_after slow_every slow_ms "
        "max_age_ms)",
    ),
    "persona": BuiltinTarget(
        lambda o: behaviour_adapter("persona", o, waits=ASYNCIO),
        "deterministic mock model (same options as echo)",
    ),
    "openai": BuiltinTarget(
        _openai,
        "bridge to an OpenAI-compatible chat-completions endpoint (options: base_url model "
        "api_key usd_per_1k_in usd_per_1k_out confidence timeout max_tokens)",
    ),
}


def load_target(target: str, options: Mapping[str, str]) -> tuple[str, Any]:
    """Instantiate ``MODULE:CLASS`` (or a :data:`BUILTIN_TARGETS` name) with ``options``.

    A class with a ``from_options(options)`` classmethod gets the option strings; any
    other class is called as ``CLASS(**options)``.

    Returns:
        (name, adapter object)

    Raises:
        ValueError: the target cannot be imported or instantiated (message says why).
    """
    if ":" not in target:
        if target not in BUILTIN_TARGETS:
            raise ValueError(
                f"unknown adapter {target!r}: give MODULE:CLASS or one of "
                f"{', '.join(BUILTIN_TARGETS)}"
            )
        return target, BUILTIN_TARGETS[target].factory(dict(options))
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}")
    if not inspect.isclass(obj) and not callable(obj):
        raise ValueError(f"{target} is not a class")
    factory: Callable[..., Any] = getattr(obj, "from_options", None) or obj
    try:
        instance = factory(dict(options)) if factory is not obj else obj(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot create {target}: {exc}") from None
    for method in ("estimate", "stream"):
        if not callable(getattr(instance, method, None)):
            raise ValueError(f"{target} has no {method}() method")
    return getattr(instance, "name", "") or attr, instance


async def serve(
    adapter: Any,
    host: str = "127.0.0.1",
    port: int = 7070,
    *,
    name: str = "",
    grace: float = 10.0,
    max_concurrency: int = 0,
    on_listening: Callable[[AdapterServer], None] | None = None,
    estimate_max_age_ms: int = 0,
) -> None:
    """Serve ``adapter`` until SIGTERM / SIGINT, then drain gracefully (asyncio)."""
    server = AdapterServer(
        adapter,
        name=name,
        grace=grace,
        max_concurrency=max_concurrency,
        estimate_max_age_ms=estimate_max_age_ms,
    )
    await server.start(host, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if on_listening is not None:
            on_listening(server)  # it says so (atp adapter serve: a line on stdout)
        else:
            log.info("adapter %s listening on %s:%s", server.name, host, server.port)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.drain()
