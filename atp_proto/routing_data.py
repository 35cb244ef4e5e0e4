"""The ``routing-data`` record format: real per-prompt outcomes of real models, one JSON
object per line (the format of ``../shared/routing-data/``; other files in it are used to
judge a router, so nothing here knows sources or model names).

Each record: ``id``, ``source``, ``prompt``, optional ``category`` or ``subject`` (the
task type), ``bucket`` (``sha256(id) mod 100``, for deterministic splits; computed so when
absent) and ``models``: per model name, its quality (``correct`` 0/1, or ``score``),
``in_tokens``, ``out_tokens``, ``cost_usd`` (all required with a quality). A model without a
quality is left out of the record. Quality is normalised to [0, 1]: ``correct`` as is,
``score`` by its source's scale, derived from the source's scores (:func:`score_scale`:
1..10 for ``public.jsonl``'s, as ``(score - 1) / 9``; 1..5, 0..100 and others for other
data), or given by the user where the data cannot show it (``scales``:
:func:`parse_score_scales`, ``--score-scale [SOURCE=]LO:HI``). A line that is not such a
record is a :class:`DataError` naming the line and field.

Used by the learner's offline training, the replay adapter and ``atp bench routing``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "DataError",
    "Outcome",
    "Record",
    "adapter_names",
    "parse_score_scales",
    "quality_of",
    "read_records",
    "score_scale",
]

#: bounds on what one file may make us hold (a record's prompt, the records, the models)
MAX_PROMPT_CHARS = 100_000
MAX_RECORDS = 1_000_000
MAX_MODELS = 256


class DataError(ValueError):
    """A line that is not a routing-data record (the message names the line and field)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    quality: float  #: normalised to [0, 1]
    raw: float  #: as recorded (0/1, or the score on its own scale)
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
    """(normalised, raw) quality of one model's entry on the 1..10 score scale of
    ``public.jsonl``, or None when it has none (:func:`read_records` derives each
    source's score scale from its data instead: :func:`score_scale`)."""
    if "correct" in entry:
        raw = float(entry["correct"])
        return min(1.0, max(0.0, raw)), raw
    if "score" in entry:
        raw = float(entry["score"])
        return _normalised(raw, (1.0, 10.0)), raw
    return None


#: the score scales :func:`score_scale` recognises, smallest first
SCALES: tuple[tuple[float, float], ...] = ((0.0, 1.0), (1.0, 5.0), (0.0, 5.0), (1.0, 10.0))
SCALES += ((0.0, 10.0), (0.0, 100.0))


def score_scale(scores: Iterable[float]) -> tuple[float, float]:
    """The scale of one source's ``score`` values: the smallest of :data:`SCALES` that holds
    them all (1..10 for ``public.jsonl``'s judged sources, 1..5 or 0..100 for others), else
    their own range. A source whose scores never reach its scale's top half reads as a
    smaller scale (a 1..10 source scored 1..4 throughout is read as 1..5): the ranking of
    the models within it is the same, only its quality weighs more against cost."""
    values = list(scores)
    if not values:
        return SCALES[3]
    lo, hi = min(values), max(values)
    for a, b in SCALES:
        if a <= lo and hi <= b:
            return a, b
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


#: the key of :func:`parse_score_scales`' result for "every source"
EVERY_SOURCE = "*"


def parse_score_scales(items: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``--score-scale`` values: ``LO:HI`` (every source scored by ``score``) or
    ``SOURCE=LO:HI`` (that source; it wins over the first form), e.g. ``1:10`` for a
    1..10 judge whose scores never reached 6 (read as 1..5 otherwise, :func:`score_scale`).

    Raises:
        ValueError: the message names the value and what is wrong.
    """
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        source, sep, rng = item.rpartition("=")
        if sep and not source:
            raise ValueError(f"--score-scale: empty source name in {item!r}")
        lo_s, colon, hi_s = rng.partition(":")
        try:
            lo, hi = float(lo_s), float(hi_s)
        except ValueError:
            lo = hi = math.nan
        if not colon or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"--score-scale expects [SOURCE=]LO:HI (numbers), got {item!r}")
        if not lo < hi:
            raise ValueError(f"--score-scale: LO must be below HI in {item!r}")
        key = source if sep else EVERY_SOURCE
        if key in out:
            raise ValueError(f"--score-scale: {key!r} given twice")
        out[key] = (lo, hi)
    return out


def _normalised(raw: float, scale: tuple[float, float]) -> float:
    lo, hi = scale
    return min(1.0, max(0.0, (raw - lo) / (hi - lo)))


def _number(entry: Mapping[str, Any], key: str, where: str, *, integer: bool = False) -> float:
    """A finite number >= 0 (an integer when ``integer``) in ``entry[key]``; the error names
    the line, the model and the field."""
    if key not in entry:
        raise DataError(f"{where}: field {key!r} missing")
    v = entry[key]
    if (isinstance(v, bool) and key != "correct") or not isinstance(v, (int, float)):
        raise DataError(f"{where}: field {key!r} is not a number ({type(v).__name__})")
    if not math.isfinite(v) or v < 0:
        raise DataError(f"{where}: field {key!r} must be a finite number >= 0, got {v!r}")
    if integer and v != int(v):
        raise DataError(f"{where}: field {key!r} must be a whole number, got {v!r}")
    return float(v)


def _text(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise DataError(f"{where}: field {key!r} is not a string")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: field {key!r} is not valid UTF-8 (a lone surrogate)") from None
    return v


def _record(doc: Any, where: str) -> tuple[Record, dict[str, str]]:
    """The record of one line, and per model the kind of its quality ("correct", "score")."""
    if not isinstance(doc, dict):
        raise DataError(f"{where}: not a JSON object")
    prompt = _text(doc, "prompt", where)
    if not prompt:
        raise DataError(f"{where}: field 'prompt' missing or empty")
    models = doc.get("models")
    if not isinstance(models, dict):
        raise DataError(f"{where}: field 'models' missing or not an object")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DataError(f"{where}: field 'prompt' longer than {MAX_PROMPT_CHARS} characters")
    if len(models) > MAX_MODELS:
        raise DataError(f"{where}: field 'models' holds more than {MAX_MODELS} models")
    rid = _text(doc, "id", where)
    outcomes: dict[str, Outcome] = {}
    kinds: dict[str, str] = {}
    for name, entry in models.items():
        at = f"{where}: model {name!r}"
        if not isinstance(entry, dict):
            raise DataError(f"{at} is not an object")
        if not name:
            raise DataError(f"{where}: a model with an empty name")
        if "correct" in entry:
            raw = _number(entry, "correct", at)
            if raw > 1:
                raise DataError(f"{at}: field 'correct' must be 0 or 1, got {entry['correct']!r}")
            kinds[name] = "correct"
        elif "score" in entry:
            raw = _number(entry, "score", at)
            kinds[name] = "score"
        else:
            continue  # no judgment: the model is absent from this record (the format)
        outcomes[name] = Outcome(
            raw if kinds[name] == "correct" else _normalised(raw, SCALES[3]),
            raw,
            int(_number(entry, "in_tokens", at, integer=True)),
            int(_number(entry, "out_tokens", at, integer=True)),
            _number(entry, "cost_usd", at),
        )
    bucket = doc.get("bucket")
    if bucket is None:  # the format's definition
        key = rid if rid is not None else prompt  # not the path: the same split anywhere
        bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100
    if not isinstance(bucket, int) or isinstance(bucket, bool):
        raise DataError(f"{where}: field 'bucket' must be an integer")
    task = _text(doc, "category", where) or _text(doc, "subject", where)
    task = task or _text(doc, "task_type", where)
    record = Record(
        id=rid if rid is not None else where,
        source=_text(doc, "source", where) or "",
        task_type=task or "chat",
        prompt=prompt,
        bucket=bucket,
        models=outcomes,
    )
    return record, kinds


def read_records(
    path: str | Path, scales: Mapping[str, tuple[float, float]] | None = None
) -> list[Record]:
    """Every record of a JSONL file, its ``score`` qualities normalised by the scale of
    their source: the one ``scales`` gives it (by source name, or :data:`EVERY_SOURCE`
    for all; :func:`parse_score_scales`), else the one derived from the source's scores
    (:func:`score_scale`).

    Raises:
        DataError: unreadable file or a bad line (named, with the field); a score outside
            the scale given for its source; a scale given for a source the file does not
            hold with ``score`` values.
        OSError: the file cannot be opened.
    """
    out: list[Record] = []
    kinds: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as fh:  # decoded per line: a decoding error names its line
        for i, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{i}: not UTF-8 text (byte {exc.start + 1})") from None
            if not line.strip():
                continue
            if len(out) >= MAX_RECORDS:
                raise DataError(f"{path}: more than {MAX_RECORDS} records")
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{i}: not JSON ({exc.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{i}: JSON nested too deeply") from None
            record, k = _record(doc, f"{path}:{i}")
            if record.id in seen:
                raise DataError(
                    f"{path}:{i}: field 'id' {record.id!r} repeats line {seen[record.id]}"
                )
            seen[record.id] = i
            out.append(record)
            kinds.append(k)
    return _rescaled(out, kinds, scales or {}, str(path))


def _rescaled(
    records: list[Record],
    kinds: list[dict[str, str]],
    given: Mapping[str, tuple[float, float]],
    path: str,
) -> list[Record]:
    """``records`` with each source's scores normalised by that source's scale (``given``,
    else derived)."""
    scores: dict[str, list[float]] = {}
    for r, k in zip(records, kinds, strict=True):
        for m, o in r.models.items():
            if k[m] == "score":
                scores.setdefault(r.source, []).append(o.raw)
    unknown = sorted(set(given) - set(scores) - {EVERY_SOURCE})
    if EVERY_SOURCE in given and not scores:
        raise DataError(f"{path}: --score-scale given, but no record has a 'score'")
    if unknown:
        held = ", ".join(map(repr, sorted(scores))) or "none"
        raise DataError(
            f"{path}: --score-scale names source {unknown[0]!r}, which has no 'score' "
            f"values here (sources with scores: {held})"
        )
    scales = {
        src: given.get(src) or given.get(EVERY_SOURCE) or score_scale(v)
        for src, v in scores.items()
    }
    for src, v in scores.items():
        lo, hi = scales[src]
        if src in given or EVERY_SOURCE in given:
            bad = next((x for x in v if not lo <= x <= hi), None)
            if bad is not None:
                raise DataError(
                    f"{path}: source {src!r} has a 'score' of {bad:g}, outside the "
                    f"--score-scale {lo:g}:{hi:g} given for it"
                )
    if all(s == SCALES[3] for s in scales.values()):
        return records  # as read (public.jsonl: 1..10)
    out = []
    for r, k in zip(records, kinds, strict=True):
        scale = scales.get(r.source)
        if scale is None or scale == SCALES[3]:
            out.append(r)
            continue
        models = {
            m: replace(o, quality=_normalised(o.raw, scale)) if k[m] == "score" else o
            for m, o in r.models.items()
        }
        out.append(replace(r, models=models))
    return out


def adapter_name(model: str) -> str:
    """The adapter (and learner arm) name of a model: characters a router's adapter name
    may not hold (anything but letters, digits, ``-`` and ``_``) become ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in model) or "_"


def adapter_names(records: Iterable[Record]) -> dict[str, str]:
    """Each model of ``records`` by its adapter name (:func:`adapter_name`).

    Raises:
        DataError: two models whose names become the same adapter name (their outcomes
            would train one arm and be served by one adapter).
    """
    out: dict[str, str] = {}
    for r in records:
        for m in r.models:
            a = adapter_name(m)
            if out.setdefault(a, m) != m:
                raise DataError(
                    f"record {r.id!r}: models {out[a]!r} and {m!r} both become adapter "
                    f"name {a!r} (letters, digits, '-' and '_' only): rename one"
                )
    return out


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
