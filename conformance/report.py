"""Reports of a conformance run: live progress, ``report.json``, JUnit XML, one HTML page.

``report.json`` (schema ``conformance/schema/report.schema.json``, documented in
``conformance/README.md``)::

    {"schema": "atp-conformance-report/1", "role", "target", "level", "seed", "started",
     "finished", "host", "testee", "exit_code", "counts": {VERDICT: n}, "stale": [case id],
     "unreachable": str,
     "requirements": {ID: {"verdict": worst verdict, "cases": [case id]}},
     "cases": [{"id", "title", "role", "level", "strength", "requirements", "verdict",
                "message", "expected", "duration_ms", "known_failure", "repeat",
                "exchange": [{"direction", "at_ms", "hex", "decoded", "note"}]}]}

The HTML page is self-contained (no script, no external file): a summary, a table per
requirement, and per failing case the frames exchanged, hex and decoded, beside what
was expected.
"""

from __future__ import annotations

import html
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from conformance.model import CaseResult, CaseSpec, Verdict
from conformance.runner import RunSummary

__all__ = ["Progress", "summary_dict", "write_reports"]

SCHEMA = "atp-conformance-report/1"
_ORDER = [
    Verdict.ERROR,
    Verdict.FAIL,
    Verdict.NON_STRICT,
    Verdict.UNSUPPORTED,
    Verdict.SKIPPED,
    Verdict.PASS,
]


def _case_dict(r: CaseResult) -> dict[str, Any]:
    c = r.case
    return {
        "id": c.id,
        "title": c.title,
        "role": c.role.value,
        "level": c.level.value,
        "strength": c.strength.value,
        "requirements": list(c.requirements),
        "verdict": r.verdict.value,
        "message": r.message,
        "expected": r.expected,
        "duration_ms": round(r.duration_ms, 3),
        "known_failure": r.known_failure,
        "repeat": r.repeat,
        "violated": list(r.violated),
        "exchange": [asdict(e) for e in r.exchange],
    }


def summary_dict(s: RunSummary) -> dict[str, Any]:
    reqs: dict[str, dict[str, Any]] = {}
    for r in s.results:
        for rid in dict.fromkeys([*r.case.requirements, *r.violated]):
            entry = reqs.setdefault(rid, {"verdict": Verdict.PASS.value, "cases": []})
            if r.case.id not in entry["cases"]:
                entry["cases"].append(r.case.id)
            if _ORDER.index(r.verdict) < _ORDER.index(Verdict(entry["verdict"])):
                entry["verdict"] = r.verdict.value
    return {
        "schema": SCHEMA,
        "role": s.role,
        "target": s.target,
        "level": s.level,
        "seed": s.seed,
        "started": s.started,
        "finished": s.finished,
        "host": s.host,
        "testee": s.testee,
        "exit_code": s.exit_code,
        "counts": s.counts(),
        "stale": list(s.stale),
        "unreachable": s.unreachable,
        "requirements": dict(sorted(reqs.items())),
        "cases": [_case_dict(r) for r in s.results],
    }


def write_reports(s: RunSummary, directory: Path) -> dict[str, Path]:
    """report.json, junit.xml and report.html in ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = summary_dict(s)
    paths = {
        "json": directory / "report.json",
        "junit": directory / "junit.xml",
        "html": directory / "report.html",
    }
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    paths["junit"].write_bytes(_junit(doc))
    paths["html"].write_text(_html(doc), encoding="utf-8")
    return paths


def _junit(doc: dict[str, Any]) -> bytes:
    counts = doc["counts"]
    suite = ET.Element(
        "testsuite",
        name=f"atp-conformance-{doc['role']}",
        tests=str(len(doc["cases"])),
        failures=str(counts["FAIL"]),
        errors=str(counts["ERROR"]),
        skipped=str(counts["SKIPPED"] + counts["UNSUPPORTED"]),
        time=f"{max(doc['finished'] - doc['started'], 0):.3f}",
    )
    for c in doc["cases"]:
        name = c["id"] + (f"#{c['repeat']}" if c["repeat"] else "")
        tc = ET.SubElement(
            suite,
            "testcase",
            classname=f"conformance.{c['role']}",
            name=name,
            time=f"{c['duration_ms'] / 1000:.3f}",
        )
        reqs = " ".join(c["requirements"])
        text = f"{c['message']}\nexpected: {c['expected']}\nrequirements: {reqs}"
        if c["verdict"] == "FAIL" and not c["known_failure"]:
            ET.SubElement(tc, "failure", message=c["message"][:500]).text = text
        elif c["verdict"] == "ERROR" and not c["known_failure"]:
            ET.SubElement(tc, "error", message=c["message"][:500]).text = text
        elif c["verdict"] in ("SKIPPED", "UNSUPPORTED") or c["known_failure"]:
            ET.SubElement(tc, "skipped", message=f"{c['verdict']}: {c['message']}"[:500])
        elif c["verdict"] == "NON_STRICT":
            ET.SubElement(tc, "system-out").text = f"NON_STRICT (a SHOULD): {c['message']}"
    data: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}
.v{font-weight:bold;padding:1px 6px;border-radius:3px}
.PASS{background:#d8f5d8}.FAIL,.ERROR{background:#f9d0d0}.NON_STRICT{background:#fbeec0}
.UNSUPPORTED,.SKIPPED{background:#e6e6e6}
pre{background:#f7f7f7;border:1px solid #ddd;padding:6px;overflow-x:auto;white-space:pre-wrap;
word-break:break-all;margin:2px 0}
.failure{border:2px solid #e08080;border-radius:6px;padding:8px 12px;margin:12px 0}
.dir-sent{color:#03579b}.dir-received{color:#1b5e20}.dir-note{color:#666}
table.exchange{table-layout:fixed}
table.exchange th:nth-child(1){width:4em}table.exchange th:nth-child(2){width:8em}
table.exchange th:nth-child(3){width:40%}
table.exchange td:nth-child(4) pre{word-break:normal;overflow-wrap:anywhere}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _verdict(v: str, known: bool = False) -> str:
    return f'<span class="v {v}">{v}{" (known)" if known else ""}</span>'


def _html(doc: dict[str, Any]) -> str:
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>ATP conformance: {_esc(doc['role'])} — {_esc(doc['target'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>ATP conformance report: role {_esc(doc['role'])}</h1>",
        f"<p>Target <code>{_esc(doc['target'])}</code>, level {_esc(doc['level'])}, seed "
        f"{_esc(doc['seed'])}, host {_esc(doc['host'])}. Exit status "
        f"<b id='exit-code'>{doc['exit_code']}</b>.</p>",
    ]
    if doc["unreachable"]:
        out.append(f"<p class='failure'>Target unreachable: {_esc(doc['unreachable'])}</p>")
    out.append(
        "<table id='counts'><tr>"
        + "".join(f"<th>{_verdict(k)}</th>" for k in doc["counts"])
        + "</tr><tr>"
        + "".join(f"<td>{n}</td>" for n in doc["counts"].values())
        + "</tr></table>"
    )
    if doc["stale"]:
        out.append(
            "<p class='failure'>Stale known failures (they pass now; remove them from the "
            "file): " + ", ".join(f"<code>{_esc(s)}</code>" for s in doc["stale"]) + "</p>"
        )
    failures = [c for c in doc["cases"] if c["verdict"] in ("FAIL", "ERROR", "NON_STRICT")]
    out.append(f"<h2 id='failures'>Failures ({len(failures)})</h2>")
    if not failures:
        out.append("<p>None.</p>")
    for c in failures:
        out.append(
            f"<div class='failure' id='case-{_esc(c['id'])}'><h3>{_esc(c['id'])} "
            f"{_verdict(c['verdict'], c['known_failure'])}</h3>"
            f"<p>{_esc(c['title'])} — requirements "
            + ", ".join(f"<code>{_esc(r)}</code>" for r in c["requirements"])
            + "</p>"
            + (f"<p><b>Violated:</b> {_esc(', '.join(c['violated']))}</p>" if c["violated"] else "")
            + f"<p><b>Got:</b> {_esc(c['message'])}</p>"
            f"<p><b>Expected:</b> {_esc(c['expected'] or '(see the requirements)')}</p>"
        )
        out.append(
            "<table class='exchange'><tr><th>ms</th><th>dir</th><th>hex</th><th>decoded</th></tr>"
        )
        for e in c["exchange"]:
            decoded = (
                json.dumps(e["decoded"], indent=1, default=str) if e["decoded"] is not None else ""
            )
            out.append(
                f"<tr><td>{e['at_ms']:.1f}</td><td class='dir-{_esc(e['direction'])}'>"
                f"{_esc(e['direction'])}<br>{_esc(e['note'])}</td>"
                f"<td><pre class='hex'>{_esc(e['hex'])}</pre></td>"
                f"<td><pre>{_esc(decoded)}</pre></td></tr>"
            )
        out.append("</table></div>")
    out.append(
        "<h2 id='requirements'>By requirement</h2><table><tr><th>requirement</th>"
        "<th>verdict</th><th>cases</th></tr>"
    )
    for rid, entry in doc["requirements"].items():
        out.append(
            f"<tr><td>{_esc(rid)}</td><td>{_verdict(entry['verdict'])}</td><td>"
            + ", ".join(f"<a href='#case-{_esc(i)}'>{_esc(i)}</a>" for i in entry["cases"])
            + "</td></tr>"
        )
    out.append(
        "</table><h2 id='cases'>All cases</h2><table><tr><th>case</th><th>verdict</th>"
        "<th>level</th><th>ms</th><th>message</th></tr>"
    )
    for c in doc["cases"]:
        out.append(  # noqa: PERF401 - one row per case reads better as a loop
            f"<tr id='row-{_esc(c['id'])}'><td>{_esc(c['id'])}</td>"
            f"<td>{_verdict(c['verdict'], c['known_failure'])}</td><td>{c['level']}</td>"
            f"<td>{c['duration_ms']:.0f}</td><td>{_esc(c['message'])}</td></tr>"
        )
    out.append("</table></body></html>\n")
    return "\n".join(out)


def _ids(r: CaseResult) -> str:
    """The requirement IDs a FAIL / NON_STRICT saw broken, for its progress line: a vendor
    reading the terminal learns which rule of the spec to look up without the report."""
    return f" [{' '.join(r.violated)}]" if r.violated and r.verdict is not Verdict.PASS else ""


class Progress:
    """A rich progress bar on a terminal, one plain line per finished case otherwise."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty() and not quiet
        self._bar: Any = None
        self._task: Any = None

    @contextmanager
    def live(self) -> Iterator[Progress]:
        if not self.tty:
            yield self
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        with RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=self.stream),
            transient=False,
        ) as bar:
            self._bar = bar
            self._task = bar.add_task("conformance", total=None)
            yield self
        self._bar = None

    def start(self, case: CaseSpec) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=case.id[:60])

    def result(self, r: CaseResult, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
            if r.verdict in (Verdict.FAIL, Verdict.ERROR):
                from rich.markup import escape

                self._bar.console.print(
                    f"[red]{r.verdict}[/red] {escape(f'{r.case.id}: {r.message}{_ids(r)}')}",
                    markup=True,
                    highlight=False,
                )
        elif not self.quiet and r.verdict is not Verdict.SKIPPED:
            # a case not run (not selected: --level, --run, --skip) gets no line: a run of
            # two cases by --run printed 227 "SKIPPED ... not matched by --run" lines; the
            # last line counts them, and the report lists each with its reason
            tail = f" — {r.message}" if r.message and r.verdict is not Verdict.PASS else ""
            tail += _ids(r)
            known = " (known failure)" if r.known_failure else ""
            print(
                f"[{done}/{total}] {r.verdict.value:<11} {r.case.id}{known}{tail}",
                file=self.stream,
                flush=True,
            )
