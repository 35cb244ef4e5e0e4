"""The one interface the router uses to talk to adapters.

gRPC adapters (``grpc://HOST:PORT``) implement it over the network; the in-process
``builtin:`` adapters implement it directly (for tests and the demo). The router never
knows which it has.

Contract:
    * ``estimate`` is a cheap preflight: expected tokens, money, latency, and how sure.
    * ``stream`` yields :class:`Chunk` values; ``tokens`` and ``usd_micros`` are
      cumulative (so far); the last chunk has ``final=True``. The caller pulls chunks at
      its own pace: an adapter must not run ahead of the caller by more than a few chunks
      (this is what carries backpressure from a slow client to the model).
    * Cancelling the caller's scope cancels the call; ``stream`` cleans up.
    * Failures raise :class:`AdapterError` with an ATP error code (EAGENTDOWN, ETIMEOUT,
      EWINDOW_AGENT, ...) and whether anything was already streamed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from atp_proto.frames import ATPError, ErrorCode


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One unit of work sent to an adapter."""

    task_type: str
    prompt: str
    content: Mapping[str, Any] = field(default_factory=dict)  #: the SYN payload's content
    max_tokens: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    request_id: str = ""
    deadline_ms: int | None = None  #: time left for the call, if bounded
    # What the protobuf codec made of this request, kept by its first use (once per
    # request, not per call: atp_proto.adapters.proto.codec) and shared with the copies
    # ``with_deadline_ms`` makes. Like every field, ``content`` and ``meta`` are not to
    # be changed once the request is made; ``dataclasses.replace`` makes a new request
    # that keeps nothing.
    _kept: Encoded | None = field(default=None, init=False, repr=False, compare=False)

    def encoded(self) -> Encoded:
        """What the codec keeps of this request (made empty on first use)."""
        kept = self._kept
        if kept is None:
            kept = Encoded()
            object.__setattr__(self, "_kept", kept)
        return kept

    def with_deadline_ms(self, deadline_ms: int | None) -> TaskRequest:
        """This request with another ``deadline_ms``, sharing what its encoding keeps
        (``dataclasses.replace`` would make the copy encode it again)."""
        new = replace(self, deadline_ms=deadline_ms)
        object.__setattr__(new, "_kept", self.encoded())
        return new


class Encoded:
    """A :class:`TaskRequest` 's protobuf encoding, kept: the UTF-8 ``content_json`` and
    the whole Task message (``deadline_ms`` is not in it); None until made."""

    __slots__ = ("content_json", "task")

    def __init__(self) -> None:
        self.content_json: bytes | None = None
        self.task: bytes | None = None


@dataclass(frozen=True, slots=True)
class CostEstimate:
    in_tokens: int
    out_tokens: int
    usd_micros: int
    latency_p95_ms: float
    variance: float = 0.0  #: variance of the token estimate (tokens²)
    confidence: float = 0.5
    #: how long (ms) a router may reuse this estimate for tasks of the same type,
    #: max_tokens and input-size class (0: never; ATP-BUDGET-018)
    max_age_ms: int = 0

    @property
    def tokens(self) -> int:
        return self.in_tokens + self.out_tokens


@dataclass(slots=True)
class Chunk:
    """One piece of a streamed answer. Treat it as immutable; it is not frozen only
    because one is built per streamed chunk on the hot path, and a frozen dataclass
    costs 2.5 times as much to construct (0.97 vs 0.38 us)."""

    content: str
    confidence: float
    tokens: int  #: cumulative
    usd_micros: int  #: cumulative
    final: bool = False
    finish_reason: str = ""


@dataclass(frozen=True, slots=True)
class Health:
    status: str  #: READY, BUSY, PAUSE, DRAINING, DOWN
    p95_ms: float = 0.0
    error_rate: float = 0.0
    capacity: int = 0


class AdapterError(ATPError):
    """An adapter call failed. ``code``, ``message`` and ``retry_after_ms`` are the
    :class:`~atp_proto.frames.ATPError` fields (one error tree for the package: the code
    is the one the router sends when no other adapter answers); ``adapter`` names the
    adapter, and ``streamed`` tells whether output was already produced (then a retry on
    the same request would duplicate it). ``stream_id`` is 0: an adapter call knows no
    ATP stream; the router attaches the error to its stream."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        *,
        adapter: str = "",
        streamed: bool = False,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(code, message, retry_after_ms=retry_after_ms)
        self.args = (f"{adapter or 'adapter'}: {code}: {message}",)
        self.adapter = adapter
        self.streamed = streamed


@runtime_checkable
class Adapter(Protocol):
    """What the router calls. Implementations: builtin (in-process) and gRPC."""

    name: str

    async def estimate(self, request: TaskRequest) -> CostEstimate: ...

    def stream(self, request: TaskRequest) -> AsyncIterator[Chunk]: ...

    async def health(self) -> Health: ...

    async def aclose(self) -> None: ...
