"""``atp audit verify FILE...``: check the router's hash-chained decision log
(ATP-AUDIT-003).

Exit 0 when the chain holds across the files (oldest first; a log's rotated segments
``FILE.000001`` … are included when FILE is given alone), 1 when a record was edited,
deleted, inserted, reordered or cut (the first bad record is named), 2 on bad usage or
bad input (a file that cannot be read, or is not a decision log: no line of it has a
record's form; an empty file is an empty log, 0 records).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from atp_proto.cli import UsageError, prog_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="audit_cmd", metavar="ACTION", required=True)
    v = sub.add_parser(
        "verify",
        help="check the hash chain of a decision log (exit 0 intact, 1 tampered)",
        description="Check the hash chain of the decision log written by 'atp serve "
        "--audit-log FILE'. Files are checked in the order given; a single FILE brings "
        "its rotated segments (FILE.000001, ...) first. Exit 0: the chain is intact; 1: "
        "TAMPERED, a record was edited, deleted, inserted, reordered or cut (the first "
        "bad one is named); 2: bad usage, a file that cannot be read, or one that is not "
        "a decision log (no line of it is a hash-chained record; an empty file is an "
        "empty log).",
    )
    v.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="the log (its rotated segments FILE.000001, ... are found beside it), or "
        "several files in chain order",
    )
    v.add_argument(
        "--partial",
        action="store_true",
        help="the first file need not start the chain (older segments were retired)",
    )
    v.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from atp_proto._cli._files import input_file
    from atp_proto.router.audit import NotADecisionLog, segments, verify

    files: list[Path] = []
    for name in args.files:
        path = input_file(name)
        files += segments(path) if len(args.files) == 1 else [path]
    try:
        report = verify(files, from_start=not args.partial)
    except OSError as exc:
        raise UsageError(f"cannot read the log: {exc.strerror}") from None
    except NotADecisionLog as exc:
        raise UsageError(str(exc)) from None
    p = report.problem
    if args.json:
        out = {
            "ok": p is None,
            "records": report.records,
            "files": [str(f) for f in files],
            "head": report.head,
            "first_seq": report.first_seq,
            "problem": None
            if p is None
            else {"file": p.file, "line": p.line, "seq": p.seq, "reason": p.reason},
        }
        print(json.dumps(out))
    elif p is None:
        print(
            f"ok: {report.records} records in {len(files)} file(s), chain intact; "
            f"head {report.head[:16]}"
        )
    else:
        seq = f" (seq {p.seq})" if p.seq is not None else ""
        print(
            f"{prog_of(args)}: error: TAMPERED: {p.file} line {p.line}{seq}: {p.reason}; "
            f"{report.records} record{'' if report.records == 1 else 's'} before it "
            f"{'is' if report.records == 1 else 'are'} intact",
            file=sys.stderr,
        )
    return 0 if p is None else 1
