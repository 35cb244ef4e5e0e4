"""Roles of the conformance suite: one module per role (router, client, adapter, codec).

A role module has two functions (the :class:`RoleModule` protocol):

* ``cases(options: Mapping[str, Any]) -> list[CaseSpec]`` — every case of the role,
  with its requirement IDs (``atp conformance list``);
* ``async run(case: CaseSpec, ctx: RunContext) -> CaseResult`` — run one case against
  the target named in ``ctx``; never raises for a target's misbehaviour (that is a FAIL),
  only the runner turns an unexpected exception into ERROR.

Modules load lazily through :data:`ROLES`, so ``atp conformance list --role codec`` does
not import gRPC.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from conformance.model import CaseResult, CaseSpec

__all__ = ["ROLES", "RoleModule", "RunContext", "TargetUnreachable", "load_role"]


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a role's ``run`` gets besides the case: the target and the run's options."""

    target: str  #: ws://…, wss://…, grpc://…, or the --exec command line
    token: str | None = None  #: --token (bearer token for L2 auth cases)
    timeout_scale: float = 1.0  #: --timeout-scale: multiply every time bound by this
    seed: int = 0  #: --seed: fuzz cases derive their mutations from it
    adapter_listen: str | None = None  #: --adapter-listen HOST:PORT (scripted adapter)
    options: Mapping[str, Any] = field(default_factory=dict)  #: everything else
    #: e.g. "insecure": bool, "encoding": "binary"|"text", "exec": str, "repeat": int,
    #: "adapter": the running ScriptedAdapter (router role, set by the runner)

    def timeout(self, seconds: float) -> float:
        """A time bound of the spec or the case, scaled by --timeout-scale."""
        return seconds * self.timeout_scale


class TargetUnreachable(Exception):
    """Raised by a role's ``run`` when the target cannot be reached at all (the runner
    stops and exits 3)."""


class RoleModule(Protocol):
    def cases(self, options: Mapping[str, Any]) -> list[CaseSpec]: ...

    async def run(self, case: CaseSpec, ctx: RunContext) -> CaseResult: ...


#: role name -> module path, imported on first use
ROLES: dict[str, str] = {
    "router": "conformance.roles.router",
    "client": "conformance.roles.client",
    "codec": "conformance.roles.codec",
    "adapter": "conformance.roles.adapter",
}


def load_role(name: str) -> RoleModule:
    """Import the role's module (ImportError/KeyError propagate to the caller)."""
    return cast(RoleModule, importlib.import_module(ROLES[name]))
