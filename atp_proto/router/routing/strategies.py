"""Strategies: how a stream's answer is chosen among its adapters' answers (ATP-STRAT-001…).

Pure functions over finished :class:`Outcome` values; :mod:`.execute` decides which
adapters to call and when, and asks these which answer wins (or that none qualifies:
ECONSENSUS, ATP-STRAT-004).

========================= ==============================================================
``consensus`` (default)   agreement- and confidence-weighted (:func:`merge.choose`), then
                          champion / challenger escalation on ``min_confidence``
``cascade``               cheapest candidate predicted good enough first; escalate to a
                          stronger one while the answer's confidence or the predicted
                          quality is below the rule, or the step's answers disagree
``first_good``            candidates one at a time in the plan's order; the first answer
                          whose confidence reaches ``min_confidence`` wins
``quorum``                ``k`` answers must agree after normalisation (comparator)
``best_confidence``       the most confident answer
``vote``                  the answer group with the highest summed confidence wins
========================= ==============================================================

Comparators (``quorum``, ``vote``, the cascade's disagreement test) normalise an answer to
a key; answers agree when their keys are equal (ATP-STRAT-003):

* ``exact``: Unicode NFC, case-folded, whitespace runs collapsed, ends stripped;
* ``numeric``: the last number in the answer (``1,234.50`` = ``1234.5``); no number: no key;
* ``json:FIELD``: the answer parsed as JSON (or the first ``{...}`` in it), the value at the
  dotted path FIELD, as canonical JSON; invalid JSON or a missing field: no key.

An answer without a key never agrees with any answer (not even another keyless one); under
``exact``, an empty (or white-space only) answer has no key.

Strength (for "escalation never goes to a weaker adapter", ATP-STRAT-005): the learner's
predicted quality when it gave one for every candidate, else the adapter's estimate
confidence.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation

from ._model import Candidate, Outcome

__all__ = [
    "COMPARATORS",
    "MAX_COMPARATOR_LEN",
    "STRATEGIES",
    "answer_key",
    "check_comparator",
    "disagree",
    "pick_best_confidence",
    "pick_first_good",
    "pick_quorum",
    "pick_vote",
    "strength",
]

STRATEGIES = ("consensus", "cascade", "first_good", "quorum", "best_confidence", "vote")
COMPARATORS = ("exact", "numeric", "json:FIELD")
MAX_COMPARATOR_LEN = 128  #: a peer-controlled string: bounded (json:FIELD paths)
_MAX_JSON_CHARS = 1 << 20  #: answers longer than this are not parsed as JSON (no key)
_MAX_PATH_PARTS = 16

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_SPACE = re.compile(r"\s+")
_FIELD = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")


def check_comparator(spec: str) -> str:
    """``spec`` when it names a comparator.

    Raises:
        ValueError: otherwise (the message lists the comparators).
    """
    if spec in ("exact", "numeric"):
        return spec
    if (
        spec.startswith("json:")
        and len(spec) <= MAX_COMPARATOR_LEN
        and _FIELD.fullmatch(spec[5:])
        and spec.count(".") < _MAX_PATH_PARTS
    ):
        return spec
    raise ValueError(f"unknown comparator {spec[:40]!r} (known: {', '.join(COMPARATORS)})")


def answer_key(answer: str, comparator: str) -> str | None:
    """The normalised key of ``answer`` under ``comparator``; None when it has none."""
    if comparator == "numeric":
        found = _NUMBER.findall(answer)
        if not found:
            return None
        try:
            value = Decimal(found[-1].replace(",", ""))
        except InvalidOperation:
            return None
        normal = value.normalize()
        return "0" if normal.is_zero() else format(normal, "f")
    if comparator.startswith("json:"):
        return _json_key(answer, comparator[5:])
    text = _SPACE.sub(" ", unicodedata.normalize("NFC", answer)).strip().casefold()
    return text or None  # an answer that says nothing agrees with nothing


def _json_key(answer: str, path: str) -> str | None:
    if len(answer) > _MAX_JSON_CHARS:
        return None
    text = answer.strip()
    try:
        value: object = json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            return None
        try:
            value = json.loads(text[start : end + 1])
        except ValueError:
            return None
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _groups(done: Sequence[Outcome], comparator: str) -> dict[str, list[Outcome]]:
    groups: dict[str, list[Outcome]] = {}
    for o in done:
        key = answer_key(o.answer, comparator)
        if key is not None:
            groups.setdefault(key, []).append(o)
    return groups


def disagree(done: Sequence[Outcome], comparator: str) -> bool:
    """Whether two or more finished answers do not all agree."""
    finished = [o for o in done if o.finished]
    if len(finished) < 2:
        return False
    keys = [answer_key(o.answer, comparator) for o in finished]
    return None in keys or len(set(keys)) > 1


def pick_best_confidence(done: Sequence[Outcome]) -> Outcome | None:
    """The most confident finished answer (the earliest among equals)."""
    finished = [o for o in done if o.finished]
    return max(finished, key=lambda o: o.confidence) if finished else None


def pick_first_good(done: Sequence[Outcome], min_confidence: float) -> Outcome | None:
    """The first finished answer (in ``done``'s order) at least ``min_confidence``."""
    return next((o for o in done if o.finished and o.confidence >= min_confidence), None)


def pick_quorum(done: Sequence[Outcome], k: int, comparator: str) -> tuple[Outcome, int] | None:
    """The most confident answer of the largest group of at least ``k`` agreeing answers
    (the most confident group among equal sizes), with the group's size; None without."""
    groups = _groups([o for o in done if o.finished], comparator)
    best = max(
        groups.values(),
        key=lambda g: (len(g), sum(o.confidence for o in g)),
        default=None,
    )
    if best is None or len(best) < k:
        return None
    return max(best, key=lambda o: o.confidence), len(best)


def largest_group(done: Sequence[Outcome], comparator: str) -> int:
    """The size of the largest group of agreeing finished answers."""
    groups = _groups([o for o in done if o.finished], comparator)
    return max((len(g) for g in groups.values()), default=0)


def pick_vote(done: Sequence[Outcome], comparator: str) -> tuple[Outcome, float] | None:
    """Confidence-weighted vote: the group whose confidences sum highest wins (its most
    confident answer), with the group's share of the total weight. None when no answer
    has a key, when the total weight is 0, or when two groups tie at the top."""
    groups = _groups([o for o in done if o.finished], comparator)
    if not groups:
        return None
    weights = sorted(
        ((sum(o.confidence for o in g), key) for key, g in groups.items()), reverse=True
    )
    total = sum(w for w, _ in weights)
    if total <= 0 or (len(weights) > 1 and weights[0][0] == weights[1][0]):
        return None
    group = groups[weights[0][1]]
    return max(group, key=lambda o: o.confidence), weights[0][0] / total


def strength(name: str, by_name: Mapping[str, Candidate], predicted: Mapping[str, float]) -> float:
    """How strong an adapter is expected to be: the predicted quality when the learner
    gave one for every candidate, else its estimate's confidence (0 without one)."""
    if predicted and all(n in predicted for n in by_name):
        return float(predicted.get(name, 0.0))
    c = by_name.get(name)
    return c.estimate.confidence if c is not None and c.estimate is not None else 0.0
