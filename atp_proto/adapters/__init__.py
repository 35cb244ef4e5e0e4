"""The adapter plane: the interface the router uses, reference adapters, and (where
available) the gRPC client and vendor SDK."""

from ._base import Adapter, AdapterError, Chunk, CostEstimate, Health, TaskRequest
from .builtin import BehaviourAdapter, EchoAdapter, PersonaAdapter, builtin_adapter
from .resilience import ResilientAdapter

__all__ = [
    "Adapter",
    "AdapterError",
    "BehaviourAdapter",
    "Chunk",
    "CostEstimate",
    "EchoAdapter",
    "Health",
    "PersonaAdapter",
    "ResilientAdapter",
    "TaskRequest",
    "builtin_adapter",
    "connect",
]


def connect(name: str, url: str) -> Adapter:
    """An adapter for ``url``: ``builtin:KIND?opts`` or ``grpc://HOST:PORT``.

    Raises:
        ValueError: the URL is not understood (the message says why).
    """
    if url.startswith("builtin:"):
        return builtin_adapter(name, url)
    if url.startswith(("grpc://", "grpcs://")):
        try:
            from .grpc_client import GrpcAdapter
        except ModuleNotFoundError as exc:  # pragma: no cover - plane not built
            raise ValueError("gRPC adapters are not available in this build") from exc
        adapter: Adapter = GrpcAdapter.from_url(name, url)
        return adapter
    raise ValueError(
        f"unknown adapter URL {url!r}: use builtin:echo, builtin:persona or grpc://HOST:PORT"
    )
