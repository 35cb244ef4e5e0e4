"""The ``routing-data`` record format: real per-prompt outcomes of real models, one JSON
object per line (the format of ``../shared/routing-data/``; other files in it are used to
judge a router, so nothing here knows sources or model names).

Each record: ``id``, ``source``, ``prompt``, optional ``category`` (the task type),
``bucket`` (``sha256(id) mod 100``, for deterministic splits) and ``models``: per model
name, its quality (``correct`` 0/1, or ``score`` on 1..10), ``in_tokens``, ``out_tokens``,
``cost_usd``. A model without a quality is left out of the record. Quality is normalised
to [0, 1]: ``correct`` as is, ``score`` as ``(score - 1) / 9``.

Used by the learner's offline training, the replay adapter and ``atp bench routing``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DataError", "Outcome", "Record", "quality_of", "read_records"]

#: bounds on what one file may make us hold (a record's prompt, the records, the models)
MAX_PROMPT_CHARS = 100_000
MAX_RECORDS = 1_000_000
MAX_MODELS = 256


class DataError(Exception):
    """A line that is not a routing-data record (the message names the line)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    quality: float  #: normalised to [0, 1]
    raw: float  #: as recorded (0/1 or 1..10)
    in_tokens: int
    out_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    source: str
    task_type: str
    prompt: str
    bucket: int
    models: Mapping[str, Outcome] = field(default_factory=dict)


def quality_of(entry: Mapping[str, Any]) -> tuple[float, float] | None:
    """(normalised, raw) quality of one model's entry, or None when it has none."""
    if "correct" in entry:
        raw = float(entry["correct"])
        return min(1.0, max(0.0, raw)), raw
    if "score" in entry:
        raw = float(entry["score"])
        return min(1.0, max(0.0, (raw - 1.0) / 9.0)), raw
    return None


def _record(doc: Any, where: str) -> Record:
    if not isinstance(doc, dict):
        raise DataError(f"{where}: not a JSON object")
    prompt = doc.get("prompt")
    models = doc.get("models")
    if not isinstance(prompt, str) or not prompt or not isinstance(models, dict):
        raise DataError(f"{where}: a record needs a non-empty 'prompt' and a 'models' object")
    if len(prompt) > MAX_PROMPT_CHARS or len(models) > MAX_MODELS:
        raise DataError(f"{where}: prompt or model list too large")
    outcomes: dict[str, Outcome] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise DataError(f"{where}: model {name!r} is not an object")
        try:
            q = quality_of(entry)
            if q is None:
                continue
            outcomes[str(name)] = Outcome(
                q[0],
                q[1],
                int(entry.get("in_tokens", 0)),
                int(entry.get("out_tokens", 0)),
                float(entry.get("cost_usd", 0.0)),
            )
        except (TypeError, ValueError):
            raise DataError(f"{where}: model {name!r} has a non-numeric field") from None
    bucket = doc.get("bucket", 0)
    if not isinstance(bucket, int) or isinstance(bucket, bool):
        raise DataError(f"{where}: 'bucket' must be an integer")
    return Record(
        id=str(doc.get("id", where)),
        source=str(doc.get("source", "")),
        task_type=str(doc.get("category") or doc.get("task_type") or "chat"),
        prompt=prompt,
        bucket=bucket,
        models=outcomes,
    )


def read_records(path: str | Path) -> list[Record]:
    """Every record of a JSONL file.

    Raises:
        DataError: unreadable file or a bad line (named).
        OSError: the file cannot be opened.
    """
    out: list[Record] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if len(out) >= MAX_RECORDS:
                raise DataError(f"{path}: more than {MAX_RECORDS} records")
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{i}: not JSON ({exc.msg})") from None
            out.append(_record(doc, f"{path}:{i}"))
    return out


def adapter_name(model: str) -> str:
    """The adapter (and learner arm) name of a model: characters a router's adapter name
    may not hold (anything but letters, digits, ``-`` and ``_``) become ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in model) or "_"


@dataclass(frozen=True, slots=True)
class PriceModel:
    """What a router can know of a model's cost before a call: its mean output length and
    mean cost per token over a file (not any one prompt's outcome)."""

    mean_out: float
    usd_micros_per_token: float

    def estimate(self, in_tokens: int) -> tuple[int, int]:
        """(output tokens, micro-dollars) expected for a prompt of ``in_tokens``."""
        out = round(self.mean_out)
        return out, round((in_tokens + out) * self.usd_micros_per_token)


def price_model(records: list[Record], model: str) -> PriceModel | None:
    """The :class:`PriceModel` of ``model`` over ``records`` (None: no outcome of it)."""
    n = out = usd = tokens = 0.0
    for r in records:
        o = r.models.get(model)
        if o is None:
            continue
        n += 1
        out += o.out_tokens
        usd += round(o.cost_usd * 1e6)
        tokens += o.in_tokens + o.out_tokens
    if not n:
        return None
    return PriceModel(out / n, usd / tokens if tokens else 0.0)
