"""The SDK's grpclib server internals, so :mod:`atp_proto.adapters.sdk` is only the
vendor face: the raw-bytes codec, coalesced writes, and the RetryInfo details codec.

* :class:`RawCodec` — messages travel as bytes; :mod:`atp_proto.adapters.proto.codec`
  encodes them (also used by the grpclib clients of tests and benchmarks).
* **Coalesced writes** (:class:`CoalescingServer`): HTTP/2 frames written during one
  event-loop iteration leave in one ``send`` (at most 4 KiB are held back), instead of
  one system call per chunk. It overrides grpclib's private
  ``Server._protocol_factory``, which is why ``pyproject.toml`` pins grpclib exactly and
  ``tests/test_pinned_internals.py`` checks it.
* :class:`RetryInfoCodec` and :func:`grpc_error_of`: an :class:`AdapterError` from vendor
  code becomes a gRPC status (:data:`.status.ATP_TO_GRPC`) with a
  ``google.rpc.RetryInfo`` in ``grpc-status-details-bin`` (ATP-ADAPT-014).
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpclib.const import Status
from grpclib.encoding.base import CodecBase, StatusDetailsCodecBase
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server

from .._base import AdapterError
from ..proto import codec
from .status import atp_to_grpc, retry_hint_ms

__all__ = [
    "CoalescingProtocol",
    "CoalescingServer",
    "CoalescingTransport",
    "RawCodec",
    "RetryInfoCodec",
    "grpc_error_of",
]


class RawCodec(CodecBase):
    """Messages travel as bytes; encoding is done by :mod:`atp_proto.adapters.proto.codec`."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class CoalescingTransport:
    """Wraps an asyncio transport: writes made in one event-loop iteration are joined
    and sent at its end (or as soon as ``limit`` bytes wait), so a handler streaming
    many small chunks costs one system call per batch instead of one per chunk.

    Backpressure is unchanged: the joined data goes to the real transport, which still
    pauses the protocol above its high-water mark, and HTTP/2 flow control bounds what
    a handler can write between two flushes.
    """

    __slots__ = ("_buf", "_loop", "_pending", "_scheduled", "limit", "transport")

    def __init__(self, transport: asyncio.Transport, limit: int = 4096) -> None:
        self.transport = transport
        self.limit = limit
        self._loop = asyncio.get_running_loop()
        self._buf: list[bytes] = []
        self._pending = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._buf.append(data)
        self._pending += len(data)
        if self._pending >= self.limit:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        data = b"".join(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf.clear()
        self._pending = 0
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, is_closing, abort, ...
        return getattr(self.transport, name)


class CoalescingProtocol(H2Protocol):
    def connection_made(self, transport: Any) -> None:
        wrapped: Any = CoalescingTransport(transport)  # duck-types asyncio.Transport
        super().connection_made(wrapped)


class CoalescingServer(Server):
    """grpclib's server with coalesced writes (:class:`CoalescingTransport`)."""

    def _protocol_factory(self) -> H2Protocol:
        proto = super()._protocol_factory()
        return CoalescingProtocol(proto.handler, proto.config, proto.h2_config)


class RetryInfoCodec(StatusDetailsCodecBase):
    """``details`` of a :class:`GRPCError` = a retry hint in milliseconds, sent as a
    ``google.rpc.Status`` holding a ``google.rpc.RetryInfo`` (grpclib writes it to the
    ``grpc-status-details-bin`` trailer; it refuses a ``grpc-retry-pushback-ms`` one)."""

    def encode(self, status: Status, message: str | None, details: Any) -> bytes:
        return codec.encode_retry_status(status.value, message or "", int(details))

    def decode(self, status: Status, message: str | None, data: bytes) -> Any:
        return codec.decode_retry_info(data)


def grpc_error_of(exc: AdapterError) -> GRPCError:
    """The :class:`GRPCError` the SDK sends for an :class:`AdapterError` raised by vendor
    code: its status from :data:`.status.ATP_TO_GRPC`, its message, its positive
    ``retry_after_ms`` as a RetryInfo (ATP-ADAPT-014)."""
    status = Status(int(atp_to_grpc(exc.code)))
    return GRPCError(
        status, exc.message or str(exc.code), details=retry_hint_ms(exc.retry_after_ms)
    )
