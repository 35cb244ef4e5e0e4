"""The gRPC vocabulary both sides of ``atp.adapter.v1`` share: status codes, their ATP
error codes in both directions, the HTTP fallback, ``grpc-timeout`` and the retry hints.

Pure values and functions (no I/O, no trio, no grpclib), so the trio client
(:mod:`.client`) and the asyncio SDK server (:mod:`.server`) speak from one table:
a code added on one side cannot be forgotten on the other (ATP-ADAPT-004, ATP-ADAPT-014).
"""

from __future__ import annotations

import base64
import enum
import math
import re

from atp_proto.frames import ErrorCode

from .._base import AdapterError
from ..proto import codec

__all__ = [
    "ATP_TO_GRPC",
    "GRPC_TO_ATP",
    "HTTP_TO_GRPC",
    "SERVICE",
    "GrpcStatus",
    "RpcError",
    "atp_to_grpc",
    "encode_grpc_timeout",
    "grpc_error",
    "method_path",
    "parse_grpc_timeout",
    "pushback_ms",
    "retry_hint_ms",
    "retry_info_ms",
]

#: the service every adapter implements (``adapter.proto``; ATP-ADAPT-006)
SERVICE = "/atp.adapter.v1.AdapterService"


def method_path(method: str) -> str:
    """The HTTP/2 ``:path`` of one of the service's methods (``Estimate``, ``Stream``,
    ``Health``)."""
    return f"{SERVICE}/{method}"


class GrpcStatus(enum.IntEnum):
    """gRPC status codes (the numbers are fixed by the gRPC spec). An ``IntEnum`` so a
    status read off the wire as an ``int`` compares and looks up equal."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: gRPC status received by the router -> ATP error code; anything else is EAGENTDOWN.
GRPC_TO_ATP: dict[int, ErrorCode] = {
    GrpcStatus.UNAVAILABLE: ErrorCode.EAGENTDOWN,
    GrpcStatus.DEADLINE_EXCEEDED: ErrorCode.ETIMEOUT,
    GrpcStatus.RESOURCE_EXHAUSTED: ErrorCode.EWINDOW_AGENT,
    GrpcStatus.INVALID_ARGUMENT: ErrorCode.EPROTO,
    GrpcStatus.UNAUTHENTICATED: ErrorCode.ESEC,
    GrpcStatus.PERMISSION_DENIED: ErrorCode.ESEC,
}

#: ATP error code raised by vendor code -> gRPC status the SDK sends to the router;
#: anything else is INTERNAL.
ATP_TO_GRPC: dict[str, GrpcStatus] = {
    ErrorCode.EAGENTDOWN: GrpcStatus.UNAVAILABLE,
    ErrorCode.EDRAINING: GrpcStatus.UNAVAILABLE,
    ErrorCode.ETIMEOUT: GrpcStatus.DEADLINE_EXCEEDED,
    ErrorCode.EWINDOW_AGENT: GrpcStatus.RESOURCE_EXHAUSTED,
    ErrorCode.EWINDOW: GrpcStatus.RESOURCE_EXHAUSTED,
    ErrorCode.EBUDGET: GrpcStatus.RESOURCE_EXHAUSTED,
    ErrorCode.EPROTO: GrpcStatus.INVALID_ARGUMENT,
    ErrorCode.ETOOBIG: GrpcStatus.INVALID_ARGUMENT,
    ErrorCode.ESEC: GrpcStatus.PERMISSION_DENIED,
}

#: HTTP status of a non-gRPC response -> gRPC status (gRPC "HTTP to gRPC status mapping").
HTTP_TO_GRPC: dict[int, GrpcStatus] = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}


def atp_to_grpc(code: ErrorCode | str) -> GrpcStatus:
    """The gRPC status for an ATP error code raised by vendor code (:data:`ATP_TO_GRPC`)."""
    return ATP_TO_GRPC.get(str(code), GrpcStatus.INTERNAL)


class RpcError(Exception):
    """A call ended with a non-OK status (internal to the client; converted to an
    :class:`AdapterError` by :func:`grpc_error` before it leaves the adapter)."""

    def __init__(
        self,
        status: int,
        message: str,
        retry_after_ms: int | None = None,
        *,
        transparent: bool = False,
    ) -> None:
        super().__init__(f"grpc status {status}: {message}")
        self.transparent = transparent  #: the server did not process the call
        self.status = status
        self.message = message
        self.retry_after_ms = retry_after_ms


def grpc_error(
    status: int, message: str, *, adapter: str, streamed: bool, retry_after_ms: int | None = None
) -> AdapterError:
    """The :class:`AdapterError` for a gRPC status (see :data:`GRPC_TO_ATP`)."""
    code = GRPC_TO_ATP.get(status, ErrorCode.EAGENTDOWN)
    return AdapterError(
        code,
        f"{message} (grpc status {status})" if message else f"grpc status {status}",
        adapter=adapter,
        streamed=streamed,
        retry_after_ms=retry_after_ms,
    )


# ------------------------------------------------------------------ grpc-timeout

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_TIMEOUT_RE = re.compile(rb"([0-9]{1,8})([HMSmun])")


def encode_grpc_timeout(seconds: float) -> bytes:
    """The ``grpc-timeout`` header value: milliseconds, rounded up (at least 1 ms), or
    whole seconds when milliseconds would not fit the spec's 8 digits."""
    ms = max(1, math.ceil(seconds * 1000))
    if ms < 100_000_000:
        return b"%dm" % ms
    return b"%dS" % min(99_999_999, math.ceil(seconds))


def parse_grpc_timeout(value: bytes) -> float:
    """Seconds of a ``grpc-timeout`` header value (``TimeoutValue TimeoutUnit``).

    Raises:
        ValueError: not 1-8 digits followed by one of ``H M S m u n``.
    """
    m = _TIMEOUT_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"bad grpc-timeout {value!r}")
    return int(m.group(1)) * _TIMEOUT_UNITS[m.group(2)]


# ------------------------------------------------------------------ retry hints


def pushback_ms(value: bytes) -> int | None:
    """The delay of a ``grpc-retry-pushback-ms`` trailer (gRPC A6 server pushback);
    None when malformed or negative (negative means "do not retry")."""
    try:
        retry = int(value)
    except ValueError:
        return None
    return retry if retry >= 0 else None


def retry_info_ms(value: bytes) -> int | None:
    """The retry delay (ms) of a ``grpc-status-details-bin`` trailer, if it holds a
    ``google.rpc.RetryInfo``; None when it does not or is malformed."""
    try:
        raw = base64.b64decode(value + b"=" * (-len(value) % 4), validate=False)
        return codec.decode_retry_info(raw)
    except (ValueError, codec.DecodeError):
        return None


def retry_hint_ms(retry_after_ms: object) -> int | None:
    """The retry hint the SDK sends for an :class:`AdapterError`'s ``retry_after_ms``:
    a positive int, else none (ATP-ADAPT-014)."""
    if isinstance(retry_after_ms, int) and not isinstance(retry_after_ms, bool):
        return retry_after_ms if retry_after_ms > 0 else None
    return None
