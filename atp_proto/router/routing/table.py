"""The routing table: what is not authorization, per task type, in plain TOML.

``atp serve --routing-table FILE.toml``. A ``[default]`` table applies to every task
type; a ``[task."TYPE"]`` table overrides it key by key for one task type::

    [default]
    candidates = ["cheap", "strong"]   # adapters to consider, in order
    strategy = "consensus"             # consensus | cascade | first_good | quorum |
                                       # best_confidence | vote
    fanout = 1
    min_confidence = 0.0               # escalate while the champion is below this
    min_quality = 0.0                  # cascade: escalate while predicted quality is below
    lane = "silver"                    # the best lane this task type runs in (a cap)
    [default.window]                   # the router's cap on the client's budget window
    max_tokens = 4000

    [task."qa.math"]
    strategy = "quorum"
    quorum = 2
    comparator = "numeric"

Authorization (who may run what, with which tools and data) is the Rego policy's
(:mod:`.rego`); the policy may still override anything the table says. Every problem is
found at load and reported in one line naming the file and the key (``atp serve`` exits
2; a reload keeps the last good table).
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from atp_proto.frames import BudgetWindow, QoS

__all__ = ["COMPARATORS", "STRATEGIES", "RouteEntry", "RoutingTable", "TableError"]

STRATEGIES = frozenset({"consensus", "cascade", "first_good", "quorum", "best_confidence", "vote"})
COMPARATORS = ("exact", "numeric")  #: and "json:FIELD"
LANES = {q.label: q for q in QoS if q is not QoS.UNSPECIFIED}
MAX_CANDIDATES = 64


class TableError(ValueError):
    """A routing table that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One task type's routing; None: not set here (the next layer decides)."""

    candidates: tuple[str, ...] | None = None
    strategy: str | None = None
    fanout: int | None = None
    min_confidence: float | None = None
    min_quality: float | None = None
    quorum: int | None = None
    comparator: str | None = None
    hedge: bool | None = None
    lane: QoS | None = None  #: the best lane allowed (a cap: it can only lower a lane)
    window: BudgetWindow | None = None

    def over(self, base: RouteEntry) -> RouteEntry:
        """This entry's settings over ``base``'s."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in changes.items() if v is not None})


def check_strategy(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in STRATEGIES:
        raise TableError(f"{where}: strategy must be one of {', '.join(sorted(STRATEGIES))}")
    return value


def check_comparator(value: Any, where: str) -> str:
    ok = isinstance(value, str) and (
        value in COMPARATORS or (value.startswith("json:") and len(value) > 5)
    )
    if not ok:
        raise TableError(f"{where}: comparator must be exact, numeric or json:FIELD")
    return str(value)


def check_window(value: Any, where: str) -> BudgetWindow:
    if not isinstance(value, Mapping):
        raise TableError(f"{where}: must be a table of max_tokens, max_usd_micros, max_parallel")
    known = {f.name for f in fields(BudgetWindow)}
    for key, v in value.items():
        if key not in known:
            raise TableError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise TableError(f"{where}.{key}: must be a non-negative integer, got {v!r}")
    return BudgetWindow(**dict(value))


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise TableError(f"{where}: must be a number within {lo:g}..{hi:g}, got {value!r}")
    return float(value)


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TableError(f"{where}: must be an integer within {lo}..{hi}, got {value!r}")
    return value


def parse_entry(data: Any, where: str, adapters: Collection[str] | None) -> RouteEntry:
    """One ``[default]`` or ``[task."TYPE"]`` table."""
    if not isinstance(data, Mapping):
        raise TableError(f"{where}: must be a table")
    out: dict[str, Any] = {}
    known = [f.name for f in fields(RouteEntry)]
    for key, value in data.items():
        at = f"{where}.{key}"
        if key == "candidates":
            if (
                not isinstance(value, list)
                or not value
                or len(value) > MAX_CANDIDATES
                or not all(isinstance(n, str) and n for n in value)
            ):
                raise TableError(f"{at}: must be a non-empty list of adapter names")
            unknown = [n for n in value if adapters is not None and n not in adapters]
            if unknown:
                raise TableError(f"{at}: unknown adapter(s) {', '.join(unknown)}")
            out[key] = tuple(dict.fromkeys(value))
        elif key == "strategy":
            out[key] = check_strategy(value, at)
        elif key in ("fanout", "quorum"):
            out[key] = _int(value, at, 1, 16)
        elif key in ("min_confidence", "min_quality"):
            out[key] = _number(value, at, 0.0, 1.0)
        elif key == "comparator":
            out[key] = check_comparator(value, at)
        elif key == "hedge":
            if not isinstance(value, bool):
                raise TableError(f"{at}: must be true or false")
            out[key] = value
        elif key == "lane":
            if not isinstance(value, str) or value not in LANES:  # a list is unhashable
                raise TableError(f"{at}: must be gold, silver or bronze, got {value!r}")
            out[key] = LANES[value]
        elif key == "window":
            out[key] = check_window(value, at)
        else:
            raise TableError(f"{at}: unknown key (known: {', '.join(known)})")
    return RouteEntry(**out)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    default: RouteEntry = RouteEntry()
    tasks: Mapping[str, RouteEntry] | None = None
    version: str = ""

    def entry(self, task_type: str) -> RouteEntry:
        """The routing of ``task_type``: its own table over ``[default]``."""
        own = (self.tasks or {}).get(task_type)
        return own.over(self.default) if own is not None else self.default

    @classmethod
    def parse(
        cls, doc: Mapping[str, Any], where: str, adapters: Collection[str] | None = None
    ) -> RoutingTable:
        extra = set(doc) - {"default", "task"}
        if extra:
            raise TableError(
                f"{where}: unknown table(s) {', '.join(sorted(extra))} (known: default, task)"
            )
        default = parse_entry(doc.get("default", {}), f"{where}: default", adapters)
        tasks_doc = doc.get("task", {})
        if not isinstance(tasks_doc, Mapping):
            raise TableError(f"{where}: task: must hold one table per task type")
        tasks = {
            str(name): parse_entry(data, f"{where}: task.{name}", adapters)
            for name, data in tasks_doc.items()
        }
        return cls(default, tasks)

    @classmethod
    def load(cls, path: str | Path, adapters: Collection[str] | None = None) -> RoutingTable:
        """Read and check a routing table.

        Raises:
            TableError: one line naming the file and the key.
        """
        import hashlib

        try:
            raw = Path(path).read_bytes()
            doc = tomllib.loads(raw.decode("utf-8"))
        except OSError as exc:
            why = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror or exc
            raise TableError(f"cannot read routing table {path}: {str(why).lower()}") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise TableError(f"routing table {path} is not valid TOML: {exc}") from None
        table = cls.parse(doc, str(path), adapters)
        return replace(table, version=hashlib.sha256(raw).hexdigest()[:12])
