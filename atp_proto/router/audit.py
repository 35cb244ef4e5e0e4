"""The decision log: append-only, hash-chained JSON lines (ATP-AUDIT-001…005).

Every routed stream appends one record: its candidates and their estimates, the choice
(the order the learner named, whether it explored, its scores), the strategy, the
outcome (winner, adapters tried, usage, savings, or the error code) and, when feedback
arrives later, a ``feedback`` record with the reward. Each record holds ``seq`` (0, 1, …
across every file of the log), ``prev`` (the previous record's ``hash``; 64 zeros for the
first) and ``hash``, the SHA-256 of the record's canonical JSON without ``hash`` (keys
sorted, no spaces, UTF-8). Editing, deleting, inserting or reordering a record breaks the
chain at that record; :func:`verify` names the first bad one.

Rotation by size keeps the chain: when the active file passes ``max_bytes`` it is renamed
``FILE.000001`` (then ``.000002`` …, in order) and the next record, in a new ``FILE``,
holds the hash of the last one of the renamed file. A router restarted on an existing log
continues its chain from the last record.

Off the hot path: a stream only puts a dict on a bounded in-memory queue
(:meth:`AuditLog.append`, never blocks); one writer task hashes and writes batches in a
worker thread. A full queue drops the record and counts it (``dropped``, and the
``atp_audit_dropped_total`` metric) rather than slow streams down. Fsync policy: each batch
is flushed to the OS at once; the file is fsynced at most once per ``fsync_interval_s``
(default 1 s), at every rotation and at close — a crash of the host loses at most about
that second, and a torn last line is reported by ``verify`` as the bad record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

__all__ = [
    "GENESIS",
    "AuditLog",
    "NotADecisionLog",
    "Problem",
    "canonical",
    "record_hash",
    "segments",
    "verify",
]

log = logging.getLogger("atp.router")

GENESIS = "0" * 64
_SEGMENT = re.compile(r"\.(\d{6})$")


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes hashed: sorted keys, no spaces, UTF-8 (``hash`` itself excluded)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def segments(path: str | os.PathLike[str]) -> list[Path]:
    """The log's files, oldest first: ``FILE.000001`` … then ``FILE`` (when present)."""
    active = Path(path)
    rotated = sorted(
        p
        for p in active.parent.glob(active.name + ".*")
        if _SEGMENT.search(p.name) and p.name[:-7] == active.name
    )
    return [*rotated, *([active] if active.exists() else [])]


class AuditLog:
    """The writer side: ``append`` from streams, ``run`` as one task in the router's nursery."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 64 * 1024 * 1024,
        queue: int = 4096,
        fsync_interval_s: float = 1.0,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if max_bytes < 1024 or queue < 1 or fsync_interval_s < 0:
            raise ValueError("audit log: max_bytes >= 1024, queue >= 1, fsync interval >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync_interval_s = fsync_interval_s
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](queue)
        self._on_drop = on_drop
        self.dropped = 0
        self.written = 0
        self._seq = 0
        self._prev = GENESIS
        self._file: Any = None
        self._last_sync = 0.0
        self._failing = False  #: the last write failed (logged once until one succeeds)

    # ------------------------------------------------------------------ streams' side

    def append(self, record: dict[str, Any]) -> bool:
        """Queue a record (never blocks); False when it was dropped (queue full or closed)."""
        try:
            self._send.send_nowait(record)
            return True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return False

    def feedback(self, decision_id: str, quality: float, *, source: str = "client") -> bool:
        """Queue a ``feedback`` record: the reward a client or evaluator gave a decision
        (ATP-AUDIT-002); the learner's feedback path calls it."""
        return self.append(
            {
                "kind": "feedback",
                "ts": round(time.time(), 3),
                "decision_id": decision_id,
                "reward": quality,
                "source": source,
            }
        )

    # ------------------------------------------------------------------ writer

    def close(self) -> None:
        """No more records: the writer (:meth:`run`) writes what is queued, fsyncs, closes
        the file and returns. Later appends are counted as dropped."""
        self._send.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open (continuing the chain), then write batches until :meth:`close` or a
        cancellation; on the way out write what is queued, fsync and close.

        The router closes rather than cancels it, once every stream task has ended: a
        stream appends its record on its way out, and a writer cancelled beside the
        streams would drop the records of the last ones."""
        await trio.to_thread.run_sync(self._open)
        task_status.started()
        try:
            while True:
                try:
                    batch = [await self._recv.receive()]
                except trio.EndOfChannel:
                    return
                while len(batch) < 512:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                try:
                    await trio.to_thread.run_sync(self._write, batch)
                except OSError as exc:
                    # a full disk or an I/O error must not take the router down: the
                    # batch counts as dropped, the next one tries again (the chain shows
                    # the gap to verify)
                    self._write_failed(batch, exc)
        finally:
            self._send.close()  # later appends are counted as dropped, not lost silently
            with trio.CancelScope(shield=True):
                rest: list[dict[str, Any]] = []
                while True:
                    try:
                        rest.append(self._recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                try:
                    await trio.to_thread.run_sync(self._close, rest)
                except OSError as exc:
                    self._write_failed(rest, exc)

    def _write_failed(self, batch: list[dict[str, Any]], exc: OSError) -> None:
        if not self._failing:
            log.error("decision log write failed, dropping records: %s", exc)
        self._failing = True
        for _ in batch:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        last = _last_record(segments(self.path))
        if last is not None:
            self._seq = int(last.get("seq", -1)) + 1
            self._prev = str(last.get("hash", GENESIS))
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open by the writer
        if self._file.tell() and not _ends_with_newline(self.path):
            self._file.write(b"\n")  # a torn last line stays visible to verify

    def _line(self, record: dict[str, Any]) -> bytes:
        rec = {k: v for k, v in record.items() if k not in ("seq", "prev", "hash")}
        rec["seq"], rec["prev"] = self._seq, self._prev
        rec["hash"] = digest = record_hash(rec)
        self._seq += 1
        self._prev = digest
        return canonical(rec)[:-1] + b',"hash":"' + digest.encode() + b'"}\n'

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if self._file.closed:  # a rotation failed half-way: write on in the active file
            self._file = open(self.path, "ab")  # noqa: SIM115
        f = self._file
        for record in batch:
            try:
                line = self._line(record)
            except (TypeError, ValueError) as exc:  # not JSON: a bug, never a crash
                log.warning("audit record not serialisable: %s", exc)
                continue
            if f.tell() and f.tell() + len(line) > self.max_bytes:
                f = self._rotate()
            f.write(line)
            self.written += 1
        f.flush()
        self._failing = False
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_interval_s:
            os.fsync(f.fileno())
            self._last_sync = now

    def _rotate(self) -> Any:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        try:
            rotated = [p for p in segments(self.path) if p != self.path]
            n = int(rotated[-1].name[-6:]) + 1 if rotated else 1
            os.replace(self.path, self.path.with_name(f"{self.path.name}.{n:06d}"))
        finally:  # renamed or not, the writer goes on in an open active file
            self._file = open(self.path, "ab")  # noqa: SIM115
        return self._file

    def _close(self, rest: list[dict[str, Any]]) -> None:
        if self._file is None:
            return
        try:
            if rest:
                self._write(rest)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            f, self._file = self._file, None
            with contextlib.suppress(OSError):
                f.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _last_record(files: list[Path]) -> dict[str, Any] | None:
    """The last parseable record of the log (the chain continues from it)."""
    for path in reversed(files):
        last = None
        with open(path, "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                except (ValueError, RecursionError):  # RecursionError: "[[[[..."
                    continue
                if isinstance(rec, dict) and "hash" in rec:
                    last = rec
        if last is not None:
            return last
    return None


# ---------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class Problem:
    """The first record that breaks the chain."""

    file: str
    line: int  #: 1-based
    seq: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    records: int
    files: int
    first_seq: int | None
    head: str  #: the last record's hash (anchor it elsewhere to catch a cut tail)
    problem: Problem | None


class NotADecisionLog(ValueError):
    """A file given to :func:`verify` is no decision log at all (not one line of it has a
    record's form): bad input, not tampering. (An empty file is an empty log.)"""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file} is not a decision log: {reason}")
        self.file = file
        self.reason = reason


def _is_record(raw: bytes) -> bool:
    """Has ``raw`` a record's form: a JSON object with an integer ``seq`` and a string
    ``prev`` and ``hash`` (whether they are right is the chain's question: an edited
    record keeps its form)?"""
    try:
        rec = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    if not isinstance(rec, dict):
        return False
    seq, prev, digest = rec.get("seq"), rec.get("prev"), rec.get("hash")
    return (
        isinstance(seq, int)
        and not isinstance(seq, bool)
        and isinstance(prev, str)
        and isinstance(digest, str)
    )


def _is_torn_record(raw: bytes) -> bool:
    """Is ``raw`` (a last line without its newline) the start of a record whose write was
    cut: the opening of a JSON object that does not parse yet? (A whole JSON text without a
    newline parses, and is judged by its form.)"""
    if raw.endswith(b"\n") or not raw.startswith(b'{"'):
        return False
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return True
    return False


def _holds_a_record(path: Path) -> bool:
    """Has any line of ``path`` a record's form, or is its last line a torn record (a log
    whose only record was cut by a crash is a log, not a stranger file)?"""
    with open(path, "rb") as f:
        return any(_is_record(raw) or _is_torn_record(raw) for raw in f)


def _lines(files: Iterable[Path]) -> Iterator[tuple[Path, int, bytes]]:
    for path in files:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                yield path, n, raw


def verify(files: Iterable[str | os.PathLike[str]], *, from_start: bool = True) -> Report:
    """Check the chain across ``files`` (in order). ``from_start``: the first record must
    be seq 0 with the genesis ``prev`` (False when older segments were retired).

    Raises:
        NotADecisionLog: the chain breaks in a file none of whose lines has a record's
            form (a text, JSON of another shape, binary): such a file was never a
            log, and is not called tampered (an empty file is an empty log). A log whose
            records were edited, deleted or reordered keeps their form, and is reported
            as a :class:`Problem`.
        OSError: a file cannot be read.
    """
    paths = [Path(f) for f in files]
    count, first_seq, prev, seq = 0, None, None, None
    good_in: Path | None = None  # the file of the last good record

    def bad(path: Path, n: int, s: int | None, reason: str) -> Report:
        if good_in != path and not _holds_a_record(path):
            raise NotADecisionLog(str(path), "no line of it is a hash-chained record")
        return Report(
            count, len(paths), first_seq, prev or GENESIS, Problem(str(path), n, s, reason)
        )

    for path, n, raw in _lines(paths):
        if not raw.endswith(b"\n"):
            return bad(path, n, None, "torn last line (no newline): the write was cut")
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
            return bad(path, n, None, "not a JSON record")
        if not isinstance(rec, dict):
            return bad(path, n, None, "not a JSON object")
        s = rec.get("seq")
        s = s if isinstance(s, int) and not isinstance(s, bool) else None
        try:
            intact = rec.get("hash") == record_hash(rec)
        except ValueError:  # "\ud800" is valid JSON but no UTF-8: never written by us
            intact = False
        if not intact:
            return bad(path, n, s, "hash does not match the record (edited)")
        if prev is None:
            if from_start and (s != 0 or rec.get("prev") != GENESIS):
                return bad(path, n, s, "the chain does not start at seq 0 (records before it lost)")
            first_seq = s
        else:
            if rec.get("prev") != prev:
                return bad(
                    path, n, s, "prev is not the previous record's hash (deleted or reordered)"
                )
            if s is None or seq is None or s != seq + 1:
                return bad(path, n, s, f"seq {s} after {seq} (deleted or reordered)")
        prev, seq = rec["hash"], s
        count += 1
        good_in = path
    # Empty files are an empty log: the router creates FILE at start, and a worker of
    # `--workers N` that routed nothing leaves its own empty (0 records, intact).
    return Report(count, len(paths), first_seq, prev or GENESIS, None)
