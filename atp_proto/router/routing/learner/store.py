"""The learner's state on disk: SQLite, the embedded default (ATP-FEED-007), and a JSON
form to move it between routers (``atp routing export | import``).

One row per arm (the posterior ``A^-1`` and ``b`` as little-endian float64 blobs, the
counters) and a ``meta`` table (format version, feature dimension, ridge). Writes are one
transaction (a crash leaves the previous state), done off the event loop by the router
from a :func:`snapshot` taken on it. Pending decisions are not persisted: feedback for a
decision made before a restart is refused as unknown (ATP-FEED-003).
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
from .model import Arm

__all__ = ["FORMAT", "StateError", "State", "dump_json", "load", "load_json", "save", "snapshot"]

FORMAT = "atp-routing-state"
VERSION = 1


class StateError(Exception):
    """A state file or export that cannot be read (the message says why)."""


@dataclass(frozen=True, slots=True)
class State:
    dim: int
    ridge: float
    arms: Mapping[str, Arm]


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
    return State(learner.features.dim, learner.ridge, arms)


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
    learner.arms = dict(state.arms)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arms (
  name TEXT PRIMARY KEY, n REAL NOT NULL, feedback_n INTEGER NOT NULL, q_sum REAL NOT NULL,
  latency_ms REAL NOT NULL, latency_n INTEGER NOT NULL, failures INTEGER NOT NULL,
  a_inv BLOB NOT NULL, b BLOB NOT NULL);
"""


def save(path: str | Path, state: State) -> None:
    """Write ``state`` to the SQLite file ``path`` (created if absent), atomically."""
    con = sqlite3.connect(str(path))
    try:
        with con:
            con.executescript(_SCHEMA)
            con.execute("DELETE FROM meta")
            con.execute("DELETE FROM arms")
            con.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("format", FORMAT),
                    ("version", str(VERSION)),
                    ("dim", str(state.dim)),
                    ("ridge", repr(state.ridge)),
                ],
            )
            con.executemany(
                "INSERT INTO arms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
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
                ],
            )
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


def load(path: str | Path) -> State:
    """Read a state file written by :func:`save`.

    Raises:
        StateError: missing, not SQLite, or not a routing state of this version.
    """
    if not Path(path).is_file():
        raise StateError(f"{path}: no such routing state file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            rows = con.execute(
                "SELECT name, n, feedback_n, q_sum, latency_ms, latency_n, failures, a_inv, b "
                "FROM arms"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StateError(f"{path}: not a routing state ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
        raise StateError(f"{path}: not a routing state of version {VERSION}")
    dim = int(meta["dim"])
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
    return State(dim, float(meta["ridge"]), arms)


def dump_json(state: State) -> dict[str, Any]:
    """The portable form (arrays as base64 of little-endian float64)."""

    def enc(a: np.ndarray[Any, Any]) -> str:
        return base64.b64encode(a.astype("<f8").tobytes()).decode()

    return {
        "format": FORMAT,
        "version": VERSION,
        "dim": state.dim,
        "ridge": state.ridge,
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
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise StateError(f"not an {FORMAT} document of version {VERSION}")
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
        return State(dim, float(doc["ridge"]), arms)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"malformed {FORMAT} document: {exc}") from None


def to_text(state: State) -> str:
    return json.dumps(dump_json(state))
