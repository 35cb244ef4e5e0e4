"""``atp routing train | show | export | import``: the learned router's state (a SQLite file,
the router's ``--routing-state``), offline.

    atp routing train public.jsonl --state routing.sqlite [--buckets 0-59] [--score-scale 1:10]
    atp routing show --state routing.sqlite [--worker N] [--json]
    atp routing export --state routing.sqlite > state.json
    atp routing import state.json --state other.sqlite

Train while the router that uses the file is stopped: a running router writes its own
state over the file. Exit 0 ok, 1 failed (a state or data file whose content is not
usable), 2 bad usage (a file to read that is missing or unreadable, as for every ``atp``
command; an output file that cannot be written, said before the work).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from atp_proto.cli import UsageError, prog_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="routing_cmd", metavar="ACTION", required=True)
    t = sub.add_parser(
        "train",
        help="train the state on outcome records (routing-data JSONL)",
        description="Train every model's quality model on its recorded outcomes "
        "(routing-data format); adds to the state file's knowledge (created if absent).",
    )
    t.add_argument("data", metavar="FILE.jsonl", help="outcome records, one JSON object a line")
    t.add_argument("--buckets", metavar="A-B", help="only records with A <= bucket <= B")
    t.add_argument(
        "--score-scale",
        action="append",
        default=[],
        metavar="[SOURCE=]LO:HI",
        help="the scale of the 'score' values (of every source, or of SOURCE; repeatable), "
        "where the scores do not show it: by default derived per source from its scores, "
        "so a 1..10 judge that never gave more than 5 reads as 1..5",
    )
    t.add_argument("--json", action="store_true", help="print a JSON summary")
    s = sub.add_parser(
        "show",
        help="print what the state knows per adapter",
        description="Print the fleet's (merged) state per adapter, and each worker's own "
        "rows when the file holds some (atp serve --workers N, not merged yet: the "
        "supervisor merges them when no worker runs).",
    )
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.add_argument(
        "--worker",
        type=_worker,
        metavar="N",
        help="only worker N's own rows (as the worker saved them)",
    )
    e = sub.add_parser(
        "export",
        help="print the state as portable JSON",
        description="Print the state as portable JSON (for atp routing import).",
    )
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    i = sub.add_parser(
        "import",
        help="replace the state with an exported one",
        description="Replace the state file's content with an exported one (atp routing export).",
    )
    i.add_argument("source", metavar="FILE.json", help="from atp routing export ('-': stdin)")
    for q in (t, s, e, i):
        q.add_argument(
            "--state", required=True, metavar="FILE.sqlite", help="the routing state file"
        )


def _worker(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expects a worker index (0, 1, ...), got {text!r}")
    return int(text)


def _buckets(text: str | None) -> range | None:
    if text is None:
        return None
    a, sep, b = text.partition("-")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit() or int(a) > int(b):
        raise UsageError(f"--buckets expects A-B with A <= B, got {text!r}")
    return range(int(a), int(b) + 1)


def _fail(args: argparse.Namespace, message: str, code: int = 1) -> int:
    print(f"{prog_of(args)}: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from atp_proto._cli._files import input_file, output_file
    from atp_proto.router.routing.learner import BanditLearner, store
    from atp_proto.router.routing.learner.offline import DataError, read_records, records_in
    from atp_proto.router.routing.learner.offline import train as train_records
    from atp_proto.routing_data import parse_score_scales

    path = Path(args.state)
    if args.routing_cmd in ("show", "export"):
        input_file(path, "the routing state")
    if args.routing_cmd == "train":
        input_file(args.data)
    if args.routing_cmd == "import" and args.source != "-":
        input_file(args.source)
    if args.routing_cmd == "export" and args.output:
        output_file(args.output, "--output")
    if args.routing_cmd in ("train", "import"):  # written: said before the work
        output_file(path, "--state")
    try:
        if args.routing_cmd == "train":
            buckets = _buckets(args.buckets)
            try:
                scales = parse_score_scales(args.score_scale)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            learner = BanditLearner()
            if path.exists():
                store.apply(learner, store.load(path))
            try:
                records = read_records(args.data, scales)
            except OSError as exc:
                return _fail(args, f"cannot read {args.data}: {exc.strerror}")
            chosen = list(records_in(records, buckets))
            if not chosen:
                return _fail(args, f"{args.data}: no record to train on")
            if not any(r.models for r in chosen):
                return _fail(args, f"{args.data}: no model has a 'correct' or 'score' to train on")
            counts = train_records(learner, chosen)
            store.save(path, store.snapshot(learner))
            if args.json:
                print(json.dumps({"records": len(chosen), "models": counts, "state": str(path)}))
            else:
                per = ", ".join(f"{n} {c}" for n, c in counts.items())
                print(f"trained on {len(chosen)} records ({per}); state in {path}")
            return 0
        if args.routing_cmd == "show":
            return _show(args, path, args.worker, args.json)
        if args.routing_cmd == "export":
            text = json.dumps(store.dump_json(store.load(path)))
            if args.output:
                Path(args.output).write_text(text + "\n")
            else:
                print(text)
            return 0
        # import
        try:
            raw = sys.stdin.read() if args.source == "-" else Path(args.source).read_text()
        except OSError as exc:
            return _fail(args, f"cannot read {args.source}: {exc.strerror}")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            return _fail(args, f"{args.source}: not JSON ({exc})", 2)
        state = store.load_json(doc)
        store.save(path, state)
        print(f"imported {len(state.arms)} adapter model(s) into {path}")
        return 0
    except (store.StateError, DataError) as exc:  # bad input: malformed records or state
        return _fail(args, str(exc), 2)
    except sqlite3.Error as exc:  # the file went away or filled the disk meanwhile
        return _fail(args, f"{path}: {exc}")


def _show(args: argparse.Namespace, path: Path, worker: int | None, as_json: bool) -> int:
    """The fleet's rows and each worker's own (or only worker ``worker``'s)."""
    from atp_proto.router.routing.learner import store

    found = store.workers(path)
    if worker is not None:
        if worker not in found:
            have = ", ".join(map(str, found)) if found else "none (the fleet's merged state only)"
            return _fail(args, f"{path}: no rows of worker {worker} (workers with rows: {have})")
        state = store.load(path, worker=worker)
        if as_json:
            one = {"dim": state.dim, "ridge": state.ridge, "worker": worker}
            print(json.dumps({**one, "arms": _rows(state)}))
        else:
            _table(path, {(str(worker), n): r for n, r in _rows(state).items()}, worker=True)
        return 0
    state = store.load(path)
    rows = _rows(state)
    per = {w: _rows(store.load(path, worker=w)) for w in found}
    if as_json:
        doc: dict[str, Any] = {"dim": state.dim, "ridge": state.ridge, "arms": rows}
        if per:
            doc["workers"] = {str(w): r for w, r in per.items()}
        print(json.dumps(doc))
        return 0
    _table(path, {("", n): r for n, r in rows.items()})
    if per:
        merged = {(str(w), n): r for w, wr in per.items() for n, r in wr.items()}
        _table(path, merged, worker=True)
    return 0


def _rows(state: Any) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "observations": round(a.n, 3),
            "feedback": a.feedback_n,
            "mean_quality": round(a.q_sum / a.n, 4) if a.n else None,
            "latency_ms": round(a.latency_ms, 3),
            "failures": a.failures,
        }
        for name, a in sorted(state.arms.items())
    }


def _table(
    path: Path, rows: dict[tuple[str, str], dict[str, Any]], *, worker: bool = False
) -> None:
    """``rows`` by (worker, adapter); ``worker``: the workers' own rows (a column)."""
    from rich.console import Console
    from rich.table import Table

    title = f"routing state {path}"
    title += ": each worker's own rows, not merged yet" if worker else " (the fleet's)"
    table = Table(title=title)
    cols = ("adapter", "observations", "feedback", "mean quality", "latency ms", "failures")
    for col in ("worker", *cols) if worker else cols:
        left = col in ("adapter", "worker")  # a long name folds, never cut to "claude-inst…"
        table.add_column(col, justify="left" if left else "right", overflow="fold")
    for (w, name), r in rows.items():
        mq = "-" if r["mean_quality"] is None else f"{r['mean_quality']:.3f}"
        table.add_row(
            *((w,) if worker else ()),
            name,
            f"{r['observations']:g}",
            str(r["feedback"]),
            mq,
            f"{r['latency_ms']:.1f}",
            str(r["failures"]),
        )
    # piped, 160 columns as the other reports: at rich's 80 model names fold mid-word
    Console(width=None if sys.stdout.isatty() else 160).print(table)
