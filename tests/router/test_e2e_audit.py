"""The decision log end to end: ``atp serve --audit-log FILE`` as a real process writes
one hash-chained record per stream, rotating by size; ``atp audit verify`` passes the
intact log and catches an edited, deleted, reordered or cut record, across a rotation
(ATP-AUDIT-001…005).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from atp_proto.client import Final, connect
from atp_proto.router.audit import GENESIS, AuditLog, record_hash, segments, verify
from atp_proto.testing.processes import RouterProcess

from ._helpers_e2e import ROOT, atp, clean_env

STREAMS = 12


async def _streams(url: str, n: int, tag: str) -> list[Final]:
    finals = []
    async with connect(url) as client:
        for i in range(n):
            async with client.stream(f"{tag} {i}", meta={"fanout": 2}) as st:
                finals += [item async for item in st if isinstance(item, Final)]
    return finals


def _router(log: Path) -> RouterProcess:
    return RouterProcess(
        "--no-auth",
        "--audit-log",
        str(log),
        adapters={"echo": "builtin:echo", "persona": "builtin:persona?latency_ms=0"},
        config_toml="[router]\naudit_max_bytes = 4096\n",
        env=clean_env(),
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Final]]]:
    """A log written by two router runs (the second continues the chain)."""
    log = tmp_path_factory.mktemp("audit") / "decisions.jsonl"
    finals: list[Final] = []
    for run, n in (("first", STREAMS), ("second", 2)):
        with _router(log) as router:
            finals += trio.run(_streams, router.url, n, run)
    yield log, finals


def _records(log: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for p in segments(log) for ln in p.read_text().splitlines()]


def test_every_stream_is_one_chained_record_across_rotation(
    logged: tuple[Path, list[Final]],
) -> None:
    """[ATP-AUDIT-001] [ATP-AUDIT-004] one record per stream, seq 0.., each holding the
    previous hash; the log rotated (4 KiB) and a restart continued the chain."""
    log, finals = logged
    files = segments(log)
    assert len(files) >= 2 and files[-1] == log
    recs = _records(log)
    assert len(recs) == STREAMS + 2
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    assert recs[0]["prev"] == GENESIS
    for a, b in itertools.pairwise(recs):
        assert b["prev"] == a["hash"] == record_hash(a)
    by_id = {r["decision_id"]: r for r in recs}
    for f in finals:
        rec = by_id[f.telemetry["decision_id"]]
        assert rec["kind"] == "decision" and rec["tenant"] == "local"
        assert [c["name"] for c in rec["candidates"]] == ["echo", "persona"]  # type: ignore[union-attr]
        assert rec["choice"] == ["echo", "persona"] and rec["exploration"] is False
        out = rec["outcome"]
        assert isinstance(out, dict)
        assert out["status"] == "ok" and out["winner"] == f.content["adapter"]
        assert out["usd_micros"] == f.telemetry["usd_micros"]
        assert "reward" in rec


def _copy(log: Path, tmp: Path) -> Path:
    for p in segments(log):
        shutil.copy(p, tmp / p.name)
    return tmp / log.name


def _rewrite(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))


def test_atp_audit_verify_intact_log(logged: tuple[Path, list[Final]]) -> None:
    """[ATP-AUDIT-003] the intact log (its segments found from FILE) verifies: exit 0."""
    log, _ = logged
    r = atp("audit", "verify", str(log))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ok: {STREAMS + 2} records in {len(segments(log))} file(s)")
    js = atp("audit", "verify", "--json", str(log))
    assert json.loads(js.stdout)["ok"] is True


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("edit", "hash does not match"),
        ("edit_rehash", "prev is not the previous record's hash"),
        ("delete", "prev is not the previous record's hash"),
        ("reorder", "prev is not the previous record's hash"),
        ("cut_rotated_tail", "prev is not the previous record's hash"),
        ("drop_first_segment", "does not start at seq 0"),
    ],
)
def test_atp_audit_verify_catches_tampering(
    logged: tuple[Path, list[Final]], tmp_path: Path, case: str, reason: str
) -> None:
    """[ATP-AUDIT-003] [ATP-AUDIT-005] each tampering is caught, exit 1, the first bad
    record named by file and line."""
    log = _copy(logged[0], tmp_path)
    first = segments(log)[0]
    bad_file, bad_line = first, 3
    if case == "edit":
        _rewrite(first, lambda ls: [*ls[:2], ls[2].replace('"local"', '"other"'), *ls[3:]])
    elif case == "edit_rehash":  # a careful forger recomputes the edited record's hash

        def forge(ls: list[str]) -> list[str]:
            rec = json.loads(ls[2])
            rec["outcome"]["winner"] = "forged"
            rec["hash"] = record_hash(rec)
            return [*ls[:2], json.dumps(rec) + "\n", *ls[3:]]

        _rewrite(first, forge)
        bad_line = 4
    elif case == "delete":
        _rewrite(first, lambda ls: [*ls[:2], *ls[3:]])
    elif case == "reorder":
        _rewrite(first, lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]])
    elif case == "cut_rotated_tail":
        _rewrite(first, lambda ls: ls[:-1])
        bad_file, bad_line = segments(log)[1], 1
    else:
        first.unlink()
        bad_file, bad_line = segments(log)[0], 1
    r = atp("audit", "verify", str(log))
    assert r.returncode == 1, r.stdout
    assert reason in r.stderr and f"{bad_file} line {bad_line}" in r.stderr, r.stderr
    if case == "drop_first_segment":  # retired segments: --partial checks the rest
        assert atp("audit", "verify", "--partial", str(log)).returncode == 0


def test_atp_audit_verify_usage_errors(tmp_path: Path) -> None:
    """[ATP-AUDIT-003] a missing file is bad usage: exit 2, one line, no traceback."""
    r = atp("audit", "verify", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


async def test_writer_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    """[ATP-AUDIT-004] append never blocks: with the writer not running, a full queue drops
    the record and counts it; once running, the queued record is written, chained."""
    drops: list[int] = []
    audit = AuditLog(tmp_path / "a.jsonl", queue=1, on_drop=lambda: drops.append(1))
    assert audit.append({"kind": "decision", "n": 1}) is True
    assert audit.append({"kind": "decision", "n": 2}) is False
    assert audit.dropped == 1 and drops == [1]
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        audit.feedback("abc", 0.75)
        with trio.fail_after(5):
            while audit.written < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    recs = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in recs] == [0, 1] and recs[1]["reward"] == 0.75
    assert verify([tmp_path / "a.jsonl"]).problem is None
    assert audit.append({"kind": "late"}) is False  # closed: counted, not lost silently


def test_serve_refuses_an_audit_log_it_cannot_open(tmp_path: Path) -> None:
    """[ATP-AUDIT-001] `atp serve --audit-log` in a missing directory: exit 2, one line."""
    bad = tmp_path / "missing" / "log.jsonl"
    r = atp(
        "serve", "--no-auth", "--ws", "127.0.0.1:0", "--metrics", "off", "--audit-log", str(bad)
    )
    assert r.returncode == 2 and "cannot open the audit log" in r.stderr
    assert "Traceback" not in r.stderr


async def test_close_writes_what_is_queued_then_the_writer_returns(tmp_path: Path) -> None:
    """[ATP-AUDIT-004] the router closes the writer after its stream tasks have ended
    (each appends its record on the way out) instead of cancelling it beside them: close()
    lets run() write the queue, fsync and return on its own; a later append is a drop."""
    audit = AuditLog(tmp_path / "a.jsonl")
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        for i in range(3):
            audit.append({"kind": "decision", "n": i})
        audit.close()  # no cancel: run() must return by itself
    assert audit.written == 3
    assert verify([tmp_path / "a.jsonl"]).problem is None
    assert audit.append({"kind": "late"}) is False and audit.dropped == 1
