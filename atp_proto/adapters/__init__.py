"""The adapter plane: the interface the router uses, the in-process adapters, the
resilience layer and the URL registry (:mod:`.registry`); the gRPC client is
:mod:`.grpc`, the vendor SDK :mod:`.sdk`."""

# The names below load on first use (PEP 562), so that importing one submodule (say
# ``atp_proto.adapters.audit`` for ``atp audit verify``) does not import the whole package: a
# command-line tool pays only for what it runs.
from __future__ import annotations

from typing import TYPE_CHECKING

from atp_proto._lazy import lazy_names

if TYPE_CHECKING:
    from ._base import Adapter, AdapterError, Chunk, CostEstimate, Health, TaskRequest
    from .builtin import BehaviourAdapter, EchoAdapter, PersonaAdapter, builtin_adapter
    from .registry import connect, make_adapter
    from .resilience import ResilientAdapter

_EXPORTS = {
    "Adapter": "._base",
    "AdapterError": "._base",
    "Chunk": "._base",
    "CostEstimate": "._base",
    "Health": "._base",
    "TaskRequest": "._base",
    "BehaviourAdapter": ".builtin",
    "EchoAdapter": ".builtin",
    "PersonaAdapter": ".builtin",
    "builtin_adapter": ".builtin",
    "connect": ".registry",
    "make_adapter": ".registry",
    "ResilientAdapter": ".resilience",
}

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


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, globals())
