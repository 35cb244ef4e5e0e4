"""The learner's state on disk: SQLite, the embedded default (ATP-FEED-007), and a JSON
form to move it between routers (``atp routing export | import``).

One row per arm (the posterior ``A^-1`` and ``b`` as little-endian float64 blobs, the
counters) and a ``meta`` table (format version, feature dimension, ridge, and since
version 2 the task type's feature value, ``task_weight``: a state means what its features
meant when it learned, so a learner takes the weight of the state it loads; a version-1
state is read as weight 1.0, the only one that version knew). Writes are one
transaction (a crash leaves the previous state), done off the event loop by the router
from a :func:`snapshot` taken on it. Pending decisions are not persisted: feedback for a
decision made before a restart is refused as unknown (ATP-FEED-003).

``atp serve --workers N --routing-state FILE``: N processes share the file. It is in WAL
mode with a busy timeout (a writer waits for another instead of failing; readers never
block a writer nor see half a state), and each worker writes only *its own rows*
(``worker_arms``, keyed by worker index), never the fleet's ``arms``: so no worker
overwrites another's learning. Why rows per worker and a merge rather than one shared
posterior: without ``--redis`` the workers learn apart (as they count quotas apart), and
two posteriors are combined exactly only against the state both started from, which is
``arms``. :func:`merge_workers` does it, with the supervisor's (or a lone router's)
start and the supervisor's stop, when no worker runs: in natural parameters, ``A = A_base
+ sum(A_i - A_base)``, ``b`` and the counters alike, so each observation counts once.
With ``--redis`` every worker already holds the fleet's posterior (shared observations):
the merge takes the most advanced worker's arm instead of adding them. A worker restarted
by the supervisor loads its own rows (its learning since the fleet started; the others'
stay in theirs), a new fleet loads the merged ``arms``.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bandit import BanditLearner
from .features import Featurizer
from .model import Arm

__all__ = [
    "FORMAT",
    "StateError",
    "State",
    "dump_json",
    "load",
    "load_json",
    "merge_workers",
    "save",
    "snapshot",
    "workers",
]

FORMAT = "atp-routing-state"
VERSION = 2
#: versions this code reads (1: before ``task_weight``, which was 1.0 then)
READS = ("1", "2")

#: how long a writer waits for another worker's write before giving up (then it logs and
#: retries at the next save)
BUSY_S = 10.0


class StateError(Exception):
    """A state file or export that cannot be read (the message says why)."""


@dataclass(frozen=True, slots=True)
class State:
    dim: int
    ridge: float
    arms: Mapping[str, Arm]
    task_weight: float = 1.0  #: the featurizer's (features.Featurizer.task_weight)


def _version(state: State) -> int:
    """A state whose features mean what they meant in version 1 is written as version 1
    (older routers keep reading it); another task weight needs version 2."""
    return 1 if state.task_weight == 1.0 else VERSION


def snapshot(learner: BanditLearner) -> State:
    """A copy of the learner's arms (cheap; take it on the event loop, write it anywhere)."""
    arms = {
        n: Arm(
            a.a_inv.copy(),
            a.b.copy(),
            a.n,
            a.feedback_n,
            a.q_sum,
            a.latency_ms,
            a.latency_n,
            a.failures,
        )
        for n, a in learner.arms.items()
    }
    return State(learner.features.dim, learner.ridge, arms, learner.features.task_weight)


def apply(learner: BanditLearner, state: State) -> None:
    """Install ``state`` into ``learner``.

    Raises:
        StateError: the state was made with another feature dimension.
    """
    if state.dim != learner.features.dim:
        raise StateError(
            f"routing state has feature dimension {state.dim}, the learner uses "
            f"{learner.features.dim}"
        )
    learner.ridge = state.ridge
    if learner.features.task_weight != state.task_weight:
        learner.features = Featurizer(
            learner.features.dim, learner.features.max_chars, state.task_weight
        )
    learner.arms = dict(state.arms)


_COLUMNS = """n REAL NOT NULL, feedback_n INTEGER NOT NULL, q_sum REAL NOT NULL,
  latency_ms REAL NOT NULL, latency_n INTEGER NOT NULL, failures INTEGER NOT NULL,
  a_inv BLOB NOT NULL, b BLOB NOT NULL"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arms (name TEXT PRIMARY KEY, {_COLUMNS});
CREATE TABLE IF NOT EXISTS worker_arms (
  worker INTEGER NOT NULL, name TEXT NOT NULL, {_COLUMNS}, PRIMARY KEY (worker, name));
"""
_SELECT = "name, n, feedback_n, q_sum, latency_ms, latency_n, failures, a_inv, b"


def _open(path: str | Path) -> sqlite3.Connection:
    """A connection for writing: WAL (readers and one writer at once; a crash mid-write
    leaves the last committed state) and a busy timeout (workers take turns)."""
    con = sqlite3.connect(str(path), timeout=BUSY_S, isolation_level=None)
    con.execute(f"PRAGMA busy_timeout = {int(BUSY_S * 1000)}")
    con.execute("PRAGMA journal_mode = WAL")
    return con


def _rows(state: State) -> list[tuple[Any, ...]]:
    return [
        (
            name,
            a.n,
            a.feedback_n,
            a.q_sum,
            a.latency_ms,
            a.latency_n,
            a.failures,
            a.a_inv.astype("<f8").tobytes(),
            a.b.astype("<f8").tobytes(),
        )
        for name, a in sorted(state.arms.items())
    ]


def _write_meta(con: sqlite3.Connection, state: State) -> None:
    con.execute("DELETE FROM meta")
    con.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [
            ("format", FORMAT),
            ("version", str(_version(state))),
            ("dim", str(state.dim)),
            ("ridge", repr(state.ridge)),
            *([("task_weight", repr(state.task_weight))] if _version(state) > 1 else []),
        ],
    )


def save(path: str | Path, state: State, *, worker: int | None = None) -> None:
    """Write ``state`` to the SQLite file ``path`` (created if absent), atomically: the
    fleet's ``arms``, or with ``worker`` that worker's own rows only."""
    con = _open(path)
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            _write_meta(con, state)
            if worker is None:
                con.execute("DELETE FROM arms")
                con.executemany("INSERT INTO arms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _rows(state))
            else:
                con.execute("DELETE FROM worker_arms WHERE worker = ?", (worker,))
                con.executemany(
                    "INSERT INTO worker_arms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(worker, *r) for r in _rows(state)],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()


def _arm(dim: int, a_inv: bytes, b: bytes, **counts: Any) -> Arm:
    ai = np.frombuffer(a_inv, dtype="<f8")
    bv = np.frombuffer(b, dtype="<f8")
    if ai.size != dim * dim or bv.size != dim:
        raise StateError("an arm's arrays do not match the feature dimension")
    return Arm(
        ai.reshape(dim, dim).astype(np.float64),
        bv.astype(np.float64),
        float(counts["n"]),
        int(counts["feedback_n"]),
        float(counts["q_sum"]),
        float(counts["latency_ms"]),
        int(counts["latency_n"]),
        int(counts["failures"]),
    )


def _state(meta: Mapping[str, str], rows: list[Any], path: str | Path) -> State:
    if meta.get("format") != FORMAT or meta.get("version") not in READS:
        raise StateError(f"{path}: not a routing state of version {' or '.join(READS)}")
    dim = int(meta["dim"])
    task_weight = _task_weight(meta.get("task_weight", "1.0"), path)
    arms = {
        r[0]: _arm(
            dim,
            r[7],
            r[8],
            n=r[1],
            feedback_n=r[2],
            q_sum=r[3],
            latency_ms=r[4],
            latency_n=r[5],
            failures=r[6],
        )
        for r in rows
    }
    return State(dim, float(meta["ridge"]), arms, task_weight)


def _task_weight(value: Any, where: str | Path) -> float:
    try:
        tw = float(value)
    except (TypeError, ValueError):
        tw = float("nan")
    if not tw > 0 or not np.isfinite(tw):
        raise StateError(f"{where}: task_weight must be a finite number > 0, got {value!r}")
    return tw


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def load(path: str | Path, *, worker: int | None = None) -> State:
    """Read a state file written by :func:`save`: the fleet's ``arms``, or with ``worker``
    that worker's own rows when it has saved any (a worker restarted by the supervisor).

    Raises:
        StateError: missing, not SQLite, or not a routing state of this version.
    """
    if not Path(path).is_file():
        raise StateError(f"{path}: no such routing state file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_S)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            rows = []
            if worker is not None and "worker_arms" in _tables(con):
                rows = con.execute(
                    f"SELECT {_SELECT} FROM worker_arms WHERE worker = ?", (worker,)
                ).fetchall()
            if not rows:
                rows = con.execute(f"SELECT {_SELECT} FROM arms").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StateError(f"{path}: not a routing state ({exc})") from None
    return _state(meta, rows, path)


def workers(path: str | Path) -> list[int]:
    """The workers whose own rows the file holds (``--workers N`` wrote them and no merge
    has folded them into the fleet's ``arms`` yet), in order; [] for none.

    Raises:
        StateError: missing or not SQLite.
    """
    if not Path(path).is_file():
        raise StateError(f"{path}: no such routing state file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_S)
        try:
            if "worker_arms" not in _tables(con):
                return []
            found = con.execute("SELECT DISTINCT worker FROM worker_arms ORDER BY worker")
            return [int(r[0]) for r in found.fetchall()]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StateError(f"{path}: not a routing state ({exc})") from None


def _added(base: Arm, changed: list[Arm]) -> Arm:
    """``base`` plus what each of ``changed`` (all started from ``base``) learned."""
    precision = np.linalg.inv(base.a_inv)
    precision = precision + sum((np.linalg.inv(w.a_inv) - precision for w in changed), 0.0)
    a_inv = np.linalg.inv(precision)
    lat_n = base.latency_n + sum(w.latency_n - base.latency_n for w in changed)
    weights = [(w.latency_ms, w.latency_n - base.latency_n) for w in changed]
    lat_w = base.latency_n + sum(max(0, k) for _, k in weights)
    latency = (
        (base.latency_ms * base.latency_n + sum(v * max(0, k) for v, k in weights)) / lat_w
        if lat_w
        else base.latency_ms
    )
    return Arm(
        np.asarray((a_inv + a_inv.T) / 2, dtype=np.float64),
        base.b + sum((w.b - base.b for w in changed), np.zeros_like(base.b)),
        base.n + sum(w.n - base.n for w in changed),
        base.feedback_n + sum(w.feedback_n - base.feedback_n for w in changed),
        base.q_sum + sum(w.q_sum - base.q_sum for w in changed),
        latency,
        lat_n,
        base.failures + sum(w.failures - base.failures for w in changed),
    )


def _same(a: Arm, b: Arm) -> bool:
    return (a.n, a.failures, a.latency_n, a.feedback_n) == (
        b.n,
        b.failures,
        b.latency_n,
        b.feedback_n,
    )


def merge_workers(path: str | Path, *, shared: bool = False) -> int:
    """Fold the workers' rows into the fleet's ``arms`` and delete them, in one
    transaction; run it while no worker runs (the supervisor's start and stop, a lone
    router's start). ``shared``: the workers shared their observations (``--redis``), so
    each holds the fleet's posterior and the most advanced one is kept instead of adding
    them. Returns the workers merged (0: nothing to do, or no file).

    Raises:
        StateError: the file is not a routing state (the message says why).
    """
    if not Path(path).is_file():
        return 0
    try:
        con = _open(path)
    except sqlite3.Error as exc:
        raise StateError(f"{path}: not a routing state ({exc})") from None
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            if "worker_arms" not in _tables(con):
                con.execute("ROLLBACK")
                return 0
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            base = _state(meta, con.execute(f"SELECT {_SELECT} FROM arms").fetchall(), path)
            by_worker: dict[int, list[Any]] = {}
            for worker, *row in con.execute(f"SELECT worker, {_SELECT} FROM worker_arms"):
                by_worker.setdefault(int(worker), []).append(row)
            if not by_worker:
                con.execute("ROLLBACK")
                return 0
            workers = [_state(meta, rows, path) for rows in by_worker.values()]
            merged = dict(base.arms)
            for name in sorted({n for w in workers for n in w.arms}):
                versions = [w.arms[name] for w in workers if name in w.arms]
                if shared:
                    merged[name] = max(versions, key=lambda a: (a.n, a.failures, a.latency_n))
                    continue
                start = base.arms.get(name) or _prior(base, name)
                changed = [v for v in versions if not _same(v, start)]
                if len(changed) == 1:
                    merged[name] = changed[0]
                elif changed:
                    merged[name] = _added(start, changed)
            state = State(base.dim, base.ridge, merged, base.task_weight)
            _write_meta(con, state)
            con.execute("DELETE FROM arms")
            con.executemany("INSERT INTO arms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _rows(state))
            con.execute("DELETE FROM worker_arms")
            con.execute("COMMIT")
            return len(by_worker)
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StateError(f"{path}: routing state not merged ({exc})") from None
    finally:
        con.close()


def _prior(state: State, name: str) -> Arm:
    """The arm a worker started ``name`` from when the fleet's state had none: the
    learner's prior (an arm's prior lives in its ``A^-1``, the bandit's default)."""
    learner = BanditLearner(ridge=state.ridge)
    if learner.features.dim != state.dim:
        raise StateError(f"cannot merge arm {name!r}: no prior of feature dimension {state.dim}")
    return learner.arm(name)


def dump_json(state: State) -> dict[str, Any]:
    """The portable form (arrays as base64 of little-endian float64)."""

    def enc(a: np.ndarray[Any, Any]) -> str:
        return base64.b64encode(a.astype("<f8").tobytes()).decode()

    return {
        "format": FORMAT,
        "version": _version(state),
        "dim": state.dim,
        "ridge": state.ridge,
        **({"task_weight": state.task_weight} if _version(state) > 1 else {}),
        "arms": {
            n: {
                "n": a.n,
                "feedback_n": a.feedback_n,
                "q_sum": a.q_sum,
                "latency_ms": a.latency_ms,
                "latency_n": a.latency_n,
                "failures": a.failures,
                "a_inv": enc(a.a_inv),
                "b": enc(a.b),
            }
            for n, a in sorted(state.arms.items())
        },
    }


def load_json(doc: Any) -> State:
    """Parse what :func:`dump_json` made.

    Raises:
        StateError: not such a document (the message says what is wrong).
    """
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or str(doc.get("version")) not in READS
    ):
        raise StateError(f"not an {FORMAT} document of version {' or '.join(READS)}")
    task_weight = _task_weight(doc.get("task_weight", 1.0), FORMAT)
    try:
        dim = int(doc["dim"])
        arms = {}
        for name, a in dict(doc["arms"]).items():
            counts = {k: a[k] for k in ("n", "feedback_n", "q_sum", "latency_ms", "latency_n")}
            arms[str(name)] = _arm(
                dim,
                base64.b64decode(a["a_inv"], validate=True),
                base64.b64decode(a["b"], validate=True),
                failures=a["failures"],
                **counts,
            )
        return State(dim, float(doc["ridge"]), arms, task_weight)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"malformed {FORMAT} document: {exc}") from None


def to_text(state: State) -> str:
    return json.dumps(dump_json(state))
