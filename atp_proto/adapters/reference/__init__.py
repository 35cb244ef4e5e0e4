"""Reference adapters served by ``atp adapter serve NAME``: echo, persona and openai.

``echo`` and ``persona`` are the in-process :mod:`atp_proto.adapters.builtin` adapters
(same classes, answers, costs, options and failure modes) running under the SDK's asyncio
server: only the waiting (``latency_ms`` and ``fail=stall``) is done with asyncio instead
of trio. Options: ``atp adapter serve 'persona?latency_ms=20&fail=cut&fail_after=3'`` or
``--option latency_ms=20 --option fail=cut``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atp_proto.adapters.builtin import (
    _KINDS,
    BehaviourAdapter,
    BehaviourConfig,
    EchoAdapter,
    PersonaAdapter,
)

__all__ = ["REFERENCE", "AsyncioEcho", "AsyncioPersona", "Reference", "behaviour_adapter"]


class _AsyncioBehaviour(BehaviourAdapter):
    """:class:`BehaviourAdapter` waiting with asyncio instead of trio (all else inherited,
    so the gRPC reference adapters answer exactly as the builtin ones)."""

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _hang(self) -> None:
        await asyncio.Event().wait()


class AsyncioEcho(_AsyncioBehaviour, EchoAdapter):
    kind = "echo"


class AsyncioPersona(_AsyncioBehaviour, PersonaAdapter):
    kind = "persona"


_ASYNCIO_CLASSES: dict[str, type[BehaviourAdapter]] = {
    "echo": AsyncioEcho,
    "persona": AsyncioPersona,
}


def behaviour_adapter(kind: str, options: Mapping[str, str], name: str = "") -> BehaviourAdapter:
    """An asyncio echo / persona adapter with the builtin defaults for ``kind``.

    Raises:
        ValueError: bad options (the message says which).
    """
    _, defaults = _KINDS[kind]
    return _ASYNCIO_CLASSES[kind](name or kind, BehaviourConfig.from_query(options, **defaults))


def _openai(options: Mapping[str, str]) -> Any:
    from atp_proto.adapters.openai_bridge import OpenAIBridge

    return OpenAIBridge.from_options(options)


@dataclass(frozen=True)
class Reference:
    factory: Callable[[Mapping[str, str]], Any]
    description: str


REFERENCE: dict[str, Reference] = {
    "echo": Reference(
        lambda o: behaviour_adapter("echo", o),
        "answers with the prompt "
        "(options: latency_ms chunks usd_per_1k confidence fail fail_after)",
    ),
    "persona": Reference(
        lambda o: behaviour_adapter("persona", o),
        "deterministic mock model (same options as echo)",
    ),
    "openai": Reference(
        _openai,
        "bridge to an OpenAI-compatible chat-completions endpoint "
        "(options: base_url model api_key usd_per_1k_in usd_per_1k_out confidence timeout)",
    ),
}
