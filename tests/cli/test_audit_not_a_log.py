"""``atp audit verify`` on a file that is no decision log (session 8): random text, JSON
of another shape, binary bytes were each called "TAMPERED ... line 1" (exit 1). They are
bad input: one line "... is not a decision log", exit 2, while a real log edited, deleted
or reordered stays "TAMPERED" (exit 1), and an empty file is an empty log (exit 0).
Real ``atp`` processes, real files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from atp_proto.router.audit import GENESIS, NotADecisionLog, record_hash, verify
from tests.router._helpers_e2e import ROOT, atp


def _line(proc: subprocess.CompletedProcess[str], rc: int) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == rc, (proc.returncode, proc.stderr)
    return lines[0]


def _chain(n: int) -> list[str]:
    """``n`` chained records as the router writes them (one JSON line each)."""
    out, prev = [], GENESIS
    for seq in range(n):
        rec = {"kind": "decision", "seq": seq, "prev": prev, "n": seq}
        rec["hash"] = prev = record_hash(rec)
        out.append(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")
    return out


NOT_LOGS: dict[str, bytes] = {
    "text": b"hello world\nthis is a README, not a log\n",
    "json_other_shape": b'{"a": 1}\n{"b": [1, 2]}\n',
    "json_list": b"[1, 2, 3]\n",
    "half_shaped": b'{"seq": "0", "prev": 0, "hash": null}\n',  # the keys, not their form
    "blank_lines": b"\n\n\n",
    "binary": bytes(range(256)) * 8,
    "no_newline": b"just some words",
    "json_without_newline": b'{"name": "a config file"}',  # whole, parses: judged by form
}


@pytest.mark.parametrize("kind", sorted(NOT_LOGS))
def test_a_file_that_is_no_decision_log_is_bad_input(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(NOT_LOGS[kind])
    line = _line(atp("audit", "verify", str(path)), 2)
    assert line.startswith(f"atp audit verify: error: {path} is not a decision log: "), line
    assert "TAMPERED" not in line
    with pytest.raises(NotADecisionLog) as exc:
        verify([path])
    assert exc.value.file == str(path)


def test_an_empty_file_is_an_empty_log(tmp_path: Path) -> None:
    """The router creates FILE at start; an idle worker of --workers N leaves it empty:
    0 records, intact (tests/cli/test_workers_audit.py runs such a worker)."""
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    proc = atp("audit", "verify", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: 0 records"), proc.stdout


def test_an_empty_active_file_after_its_rotated_segments_is_fine(tmp_path: Path) -> None:
    """A router that rotated and wrote nothing since leaves an empty FILE beside FILE.000001:
    the log is the two, intact."""
    log = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.000001").write_text("".join(_chain(3)))
    log.write_bytes(b"")
    proc = atp("audit", "verify", str(log))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: 3 records in 2 file(s)")


def test_a_stranger_file_given_after_a_log_is_named(tmp_path: Path) -> None:
    log, other = tmp_path / "a.jsonl", tmp_path / "notes.txt"
    log.write_text("".join(_chain(2)))
    other.write_text("notes\n")
    line = _line(atp("audit", "verify", str(log), str(other)), 2)
    assert line.startswith(f"atp audit verify: error: {other} is not a decision log"), line


@pytest.mark.parametrize(
    ("case", "bad_line", "reason"),
    [
        ("first_line_garbage", 1, "not a JSON record"),
        ("edit", 2, "hash does not match"),
        ("delete", 2, "prev is not the previous record's hash"),
        ("reorder", 2, "prev is not the previous record's hash"),
        ("first_deleted", 1, "does not start at seq 0"),
    ],
)
def test_a_real_log_tampered_is_still_tampered(
    tmp_path: Path, case: str, bad_line: int, reason: str
) -> None:
    lines = _chain(4)
    if case == "first_line_garbage":  # the first record overwritten: the rest is a log
        lines[0] = "garbage\n"
    elif case == "edit":
        lines[1] = lines[1].replace('"n":1', '"n":7')
    elif case == "delete":
        del lines[1]
    elif case == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        del lines[0]
    log = tmp_path / "audit.jsonl"
    log.write_text("".join(lines))
    line = _line(atp("audit", "verify", str(log)), 1)
    assert line.startswith(f"atp audit verify: error: TAMPERED: {log} line {bad_line}"), line
    assert reason in line


def test_a_log_whose_only_record_is_torn_is_a_torn_log(tmp_path: Path) -> None:
    """A router killed in its first write leaves one cut record and no newline: that is a
    log with a torn last line (exit 1, as for a torn record after good ones), not a file
    that was never a log (exit 2)."""
    (record,) = _chain(1)
    for name, text in (("only.jsonl", record[:40]), ("after.jsonl", _chain(2)[0] + record[:40])):
        log = tmp_path / name
        log.write_text(text)
        n = text.count("\n") + 1
        line = _line(atp("audit", "verify", str(log)), 1)
        assert line.startswith(f"atp audit verify: error: TAMPERED: {log} line {n}"), line
        assert "torn last line" in line


def test_help_says_what_exit_2_means() -> None:
    out = atp("audit", "verify", "--help").stdout
    assert "not a decision log" in " ".join(out.split())
    assert "not a decision log" in " ".join((ROOT / "README.md").read_text().split())
