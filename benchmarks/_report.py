"""Benchmark goals: one ``Goal`` type and one judging and rendering path for every benchmark
(codec, ws, adapters; the next ones too).

A full run is judged: each goal PASSes or FAILs and a missed goal makes the exit code 1.
A ``--quick`` run is a smoke test whose numbers are rough (fewer iterations, fewer
sessions, a cold machine), so it is *not judged*: it reports each goal's measurement beside
its target, marked "not judged (quick run)", and exits 0.

In the JSON result, ``goals`` is a list of :meth:`Goal.to_json` objects, ``judged`` says
whether the run was judged, and ``all_goals_pass`` whether every measurement met its
target (informative on a quick run).

The JSON result of every benchmark has one envelope, built by :func:`result`::

    {"benchmark": NAME, "date": ISO-8601 UTC, "machine": _harness.machine_info(...),
     "settings": {"quick": bool, ...}, "results": {...}, ...extra keys,
     "goals": [...], "judged": bool, "all_goals_pass": bool}

codec and ws produce it (bench_adapters still names "settings" "params"); the next
benchmarks (quic, routing, load) build it with :func:`result` and print their tables with
:func:`markdown_table` and :func:`print_summary`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NOT_JUDGED = "not judged (quick run)"

#: how a value in each unit is shown: (format spec, suffix)
_UNITS: dict[str, tuple[str, str]] = {
    "us": (".2f", " µs"),
    "ms": (".3f", " ms"),
    "x": (".2f", "×"),
    "GB/s": (".2f", " GB/s"),
    "GiB": (".3f", " GiB"),
    "frames/s": (",.0f", " frames/s"),
    "streams/s": (",.1f", " streams/s"),
    "MiB": (",.1f", " MiB"),
    "streams": (",.0f", " streams"),  # counts: 1,000 streams, not "1e+03 streams"
    "clients": (",.0f", " clients"),
    "share": (".1%", ""),  # a fraction of a whole: 92.0%, not "0.92×"
}

#: how a goal's target is shown where the unit's own format would not do (",g" otherwise:
#: "<= 3 µs", not "<= 3.00 µs")
_TARGET_SPECS: dict[str, str] = {"share": ".0%", "MiB": ",.2f"}


def report_console(**kw: Any) -> Any:
    """The rich console a benchmark prints its report on: the terminal's width, or 160
    columns when stdout is a pipe or a file (rich's default, 80, wraps rows and lines
    mid-word in ``atp bench ... | tee`` and CI logs)."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160, **kw)


def show(value: float, unit: str, spec: str | None = None) -> str:
    """``value`` in ``unit`` as the reports print it (``0.91 µs``, ``1.60×``)."""
    fmt, suffix = _UNITS.get(unit, (".3g", f" {unit}"))
    return f"{value:{spec or fmt}}{suffix}"


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal of a benchmark: ``measured`` against ``target`` in ``unit``; ``op`` is
    ``>=`` (more is better) or ``<=`` (less is better)."""

    name: str
    measured: float
    target: float
    unit: str
    op: str = ">="

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"goal {self.name!r}: op must be '>=' or '<=', not {self.op!r}")

    @property
    def passed(self) -> bool:
        """Whether the measurement meets the target (judged or not)."""
        if self.op == ">=":
            return self.measured >= self.target
        return self.measured <= self.target

    @property
    def target_text(self) -> str:
        return f"{self.op} {show(self.target, self.unit, _TARGET_SPECS.get(self.unit, ',g'))}"

    def to_json(self, *, judged: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "target": self.target,
            "op": self.op,
            "unit": self.unit,
            "target_text": self.target_text,
            "pass": self.passed,
            "judged": judged,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Goal:
        return cls(obj["name"], obj["measured"], obj["target"], obj["unit"], obj["op"])


def judge(goals: Sequence[Goal], *, quick: bool) -> dict[str, Any]:
    """The goals part of a benchmark's JSON result: merge it into the result dict."""
    judged = not quick
    return {
        "goals": [g.to_json(judged=judged) for g in goals],
        "judged": judged,
        "all_goals_pass": all(g.passed for g in goals),
    }


def verdict(goal: Goal, *, judged: bool) -> str:
    if not judged:
        return NOT_JUDGED
    return "PASS" if goal.passed else "FAIL"


def goals_of(result: Mapping[str, Any]) -> list[Goal]:
    return [Goal.from_json(g) for g in result["goals"]]


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per goal: verdict, measurement, target."""
    judged = bool(result["judged"])
    lines = []
    for g in goals_of(result):
        note = "" if judged else f"; {'met' if g.passed else 'not met'} in this rough run"
        lines.append(
            f"{verdict(g, judged=judged)}  {g.name}: {show(g.measured, g.unit)} "
            f"(goal {g.target_text}{note})"
        )
    return lines


def line_style(line: str) -> str | None:
    """The rich style of a summary line (green PASS, red FAIL, dim when not judged)."""
    if line.startswith("PASS"):
        return "green"
    if line.startswith("FAIL"):
        return "red"
    if line.startswith(NOT_JUDGED):
        return "yellow"
    return None


def print_summary(console: Any, lines: Iterable[str]) -> None:
    """Print summary lines on a rich console, coloured by :func:`line_style`."""
    for line in lines:
        console.print(line, style=line_style(line), markup=False)


def exit_code(result: Mapping[str, Any]) -> int:
    """0 unless a judged (full) run missed a goal: then 1."""
    if not result["judged"]:
        return 0
    return 0 if result["all_goals_pass"] else 1


def quick_note(result: Mapping[str, Any]) -> str:
    """The header's remark for a quick run."""
    if result["judged"]:
        return ""
    return " (--quick: rough numbers, goals not judged)"


def result(
    benchmark: str,
    *,
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
    results: Mapping[str, Any],
    goals: Sequence[Goal],
    quick: bool,
    **extra: Any,
) -> dict[str, Any]:
    """A benchmark's JSON result in the common envelope (see the module docstring)."""
    return {
        "benchmark": benchmark,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": dict(machine),
        "settings": {"quick": quick, **settings},
        "results": dict(results),
        **extra,
        **judge(goals, quick=quick),
    }


def markdown_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], result: Mapping[str, Any]
) -> str:
    """A Markdown table of ``rows`` followed by the goal summary (for RESULTS.md)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cells) + " |" for cells in rows]
    out.append("")
    out += [f"- {line}" for line in summary_lines(result)]
    return "\n".join(out) + "\n"
