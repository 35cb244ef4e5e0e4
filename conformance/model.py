"""The conformance suite's data model, shared by every role (router, client, adapter,
codec), the runner and the reports. Language-neutral on the wire: every value here has a
JSON form (``report.json``), documented in ``conformance/README.md``.

Verdicts (Autobahn / h2spec / MCP conformance vocabulary):

* PASS — the target did what the spec requires.
* FAIL — a MUST / MUST NOT was broken (the case names the requirement IDs).
* NON_STRICT — a SHOULD not met, or allowed-but-discouraged behaviour.
* UNSUPPORTED — an optional feature the target does not claim (or that needs an option
  the run lacks, e.g. ``--adapter-listen``).
* SKIPPED — not selected to run (``--skip``, a level above ``--level``).
* ERROR — the harness could not run the case (a bug of ours, not the target's).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CaseResult", "CaseSpec", "Exchange", "Level", "Role", "Strength", "Verdict"]


class Verdict(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    NON_STRICT = "NON_STRICT"
    UNSUPPORTED = "UNSUPPORTED"
    SKIPPED = "SKIPPED"
    ERROR = "ERROR"


class Role(enum.StrEnum):
    ROUTER = "router"
    CLIENT = "client"
    ADAPTER = "adapter"
    CODEC = "codec"


class Level(enum.StrEnum):
    L1 = "L1"  #: core framing, sequencing, flow control, errors
    L2 = "L2"  #: + auth, budgets, lanes, adapters' faults through the router
    L3 = "L3"  #: + optional features (aliases, QUIC, routing strategies)


class Strength(enum.StrEnum):
    """How a case's failure counts: a MUST fails, a SHOULD is NON_STRICT, a MAY is only
    ever UNSUPPORTED when not done."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


@dataclass(frozen=True, slots=True)
class CaseSpec:
    """One case: what it checks. Loaded from ``conformance/vectors``/``scenarios`` or
    declared in code (the adapter role's contract checks)."""

    id: str  #: permanent, e.g. "router.flow.credit-respected"; never reused
    role: Role
    title: str
    requirements: tuple[str, ...]  #: ATP-… IDs of spec/requirements.yaml
    level: Level = Level.L1
    strength: Strength = Strength.MUST
    description: str = ""  #: what it sends and expects (``atp conformance explain``)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One frame (or message, or gRPC event) seen during a case, for the reports."""

    direction: str  #: "sent" | "received" | "note"
    at_ms: float  #: since the case started
    hex: str = ""  #: the bytes on the wire (binary frames), empty otherwise
    decoded: Any = None  #: the JSON mapping of the frame, or a gRPC event as a dict
    note: str = ""


@dataclass(slots=True)
class CaseResult:
    case: CaseSpec
    verdict: Verdict
    message: str = ""  #: one line: what was expected and what came instead
    expected: str = ""
    duration_ms: float = 0.0
    exchange: Sequence[Exchange] = field(default_factory=list)
    known_failure: bool = False  #: listed in --known-failures (does not fail the run)
    repeat: int = 0  #: which repetition (--repeat)
    #: the requirement IDs a FAIL / NON_STRICT saw broken (a subset of, or beside, the
    #: case's own: a scenario also checks the invariants every exchange must keep)
    violated: Sequence[str] = ()
