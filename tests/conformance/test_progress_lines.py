"""The progress lines of ``atp conformance run`` (conformance/report.py Progress): a FAIL or
NON_STRICT line names the requirement IDs the case saw broken, on a terminal's rich bar as
on a plain stream, so a vendor knows which rule of the spec to read without opening the
report; a message holding brackets prints as it is (no rich markup taken from it)."""

from __future__ import annotations

import io

from conformance.model import CaseResult, CaseSpec, Level, Role, Strength, Verdict
from conformance.report import Progress

_CASE = CaseSpec(
    id="adapter.stream.one-final",
    role=Role.ADAPTER,
    title="one final chunk",
    requirements=("ATP-ADAPT-006", "ATP-ADAPT-018"),
    level=Level.L1,
    strength=Strength.MUST,
)


def _line(verdict: Verdict, violated: tuple[str, ...], message: str) -> str:
    out = io.StringIO()
    Progress(out).result(CaseResult(_CASE, verdict, message, violated=violated), 3, 19)
    return out.getvalue()


def test_a_failure_names_the_broken_requirement() -> None:
    line = _line(Verdict.FAIL, ("ATP-ADAPT-018",), "6 chunk(s), none final")
    assert (
        line
        == "[3/19] FAIL        adapter.stream.one-final — 6 chunk(s), none final [ATP-ADAPT-018]\n"
    )
    soft = _line(Verdict.NON_STRICT, ("ATP-ADAPT-010", "ATP-ADAPT-021"), "UNKNOWN")
    assert soft.endswith("— UNKNOWN [ATP-ADAPT-010 ATP-ADAPT-021]\n")


def test_a_pass_stays_short() -> None:
    assert _line(Verdict.PASS, (), "") == "[3/19] PASS        adapter.stream.one-final\n"


def test_the_rich_bar_prints_ids_and_brackets_verbatim() -> None:
    out = io.StringIO()
    progress = Progress(out)
    progress.tty = True  # the bar path, on a StringIO
    with progress.live():
        progress.result(
            CaseResult(_CASE, Verdict.FAIL, "got [bold]x[/bold]", violated=("ATP-ADAPT-018",)),
            1,
            1,
        )
    text = out.getvalue()
    assert "adapter.stream.one-final: got [bold]x[/bold] [ATP-ADAPT-018]" in text


def test_a_case_not_run_gets_no_line() -> None:
    # `--run GLOB` selecting 2 cases of 229 printed 227 SKIPPED lines before the verdict
    assert _line(Verdict.SKIPPED, (), "not matched by --run") == ""
    assert _line(Verdict.UNSUPPORTED, (), "needs --token").startswith("[3/19] UNSUPPORTED ")
