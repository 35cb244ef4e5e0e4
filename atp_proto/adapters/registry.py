"""The one module that knows adapter URL schemes and the adapter lifecycle.

The router configures adapters by URL (``builtin:KIND?opts``, ``grpc://HOST:PORT``,
``grpcs://HOST:PORT?ca=FILE``). This module turns a URL into an adapter
(:func:`connect`, :func:`make_adapter`), validates a URL without building anything
(:func:`check_url`, for configuration), and starts what an adapter needs to run in the
caller's nursery (:func:`start`): the connection tasks of a gRPC adapter
(``nursery.start(adapter.run)``, ownership being mandatory) and the health loop of a
:class:`ResilientAdapter`. The router never asks which kind of adapter it has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import trio

from ._base import Adapter
from .builtin import builtin_adapter
from .resilience import ResilientAdapter

__all__ = ["REMOTE_SCHEMES", "SCHEMES", "Owned", "check_url", "connect", "make_adapter", "start"]

_USE = "use builtin:echo, builtin:persona, grpc://HOST:PORT or grpcs://HOST:PORT"


def _grpc(name: str, url: str) -> Adapter:
    try:
        from .grpc import GrpcAdapter
    except ModuleNotFoundError as exc:  # pragma: no cover - plane not built
        raise ValueError("gRPC adapters are not available in this build") from exc
    return GrpcAdapter.from_url(name, url)


#: URL scheme -> factory ``(name, url) -> Adapter`` (raises ValueError on a bad URL)
SCHEMES: dict[str, Callable[[str, str], Adapter]] = {
    "builtin": builtin_adapter,
    "grpc": _grpc,
    "grpcs": _grpc,
}

#: schemes of adapters behind a network: they get the resilience layer
REMOTE_SCHEMES = frozenset({"grpc", "grpcs"})


@runtime_checkable
class Owned(Protocol):
    """An adapter whose tasks must run in an owner's nursery (``nursery.start(run)``)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported URL {url!r} ({_USE})")
    return scheme


def check_url(url: str) -> None:
    """Validate the scheme of an adapter URL (configuration time; builds nothing).

    Raises:
        ValueError: the scheme is not one of :data:`SCHEMES` (the message says which are).
    """
    _scheme(url)


def connect(name: str, url: str) -> Adapter:
    """The bare adapter for ``url`` (no resilience layer).

    Raises:
        ValueError: the URL is not understood (the message says why).
    """
    return SCHEMES[_scheme(url)](name, url)


def make_adapter(name: str, url: str) -> Adapter:
    """The adapter the router uses for a configured URL. Remote (gRPC) adapters get the
    resilience layer: health checks, an AIMD concurrency limit, a circuit breaker,
    retries before output.

    Raises:
        ValueError: the URL is not understood (the message names the adapter and says why).
    """
    try:
        scheme = _scheme(url)
        adapter = SCHEMES[scheme](name, url)
    except ValueError as exc:
        raise ValueError(f"adapter {name}: {exc}") from None
    if scheme in REMOTE_SCHEMES:
        return ResilientAdapter(adapter)
    return adapter


async def start(nursery: trio.Nursery, adapter: Adapter, *, health_interval_s: float) -> None:
    """Start what ``adapter`` needs in ``nursery`` (the owner): its connection tasks if it
    has any (a gRPC adapter, bare or inside a :class:`ResilientAdapter`), then the
    resilience layer's health loop. Cancelling the nursery stops and closes them."""
    inner = adapter.inner if isinstance(adapter, ResilientAdapter) else adapter
    if isinstance(inner, Owned):
        await nursery.start(inner.run)
    if isinstance(adapter, ResilientAdapter):
        nursery.start_soon(adapter.run_health_checks, health_interval_s)
