"""The adapter plane: the interface the router uses, the in-process adapters, the
resilience layer and the URL registry (:mod:`.registry`); the gRPC client is
:mod:`.grpc`, the vendor SDK :mod:`.sdk`."""

from ._base import Adapter, AdapterError, Chunk, CostEstimate, Health, TaskRequest
from .builtin import BehaviourAdapter, EchoAdapter, PersonaAdapter, builtin_adapter
from .registry import connect, make_adapter
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
    "make_adapter",
]
