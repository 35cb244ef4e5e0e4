"""Outcome records in the ``routing-data`` format that are *unlike* ``public.jsonl``: made
up here to check that the router, ``atp routing ...`` and ``atp bench routing --data``
were built for the format and not for the sources they were tuned on.

    python -m benchmarks.routing_foreign_data OUT.jsonl [--seed N] [--prompts N]

writes ``OUT.jsonl`` and, beside it, ``prices.json`` (which lacks one of the models, as
a price list of other data may). What differs from ``public.jsonl``:

* other source ids and five other model names: the strong one is ``orion-xl``; one name
  holds a ``/`` and a ``.`` (not allowed in adapter names); one model costs nothing; two
  have the same prices (ties in cost);
* source ``lab-quiz`` has ``correct`` 0/1; ``panel-judged`` has ``score`` on 0..100 and a
  ``subject`` instead of a ``category``; ``tiny-eval`` has 10 prompts with ``score`` on
  1..5 -- the file's README promises 1..10 only, the format's readers derive the scale
  (:func:`atp_proto.routing_data.score_scale`);
* models missing on some records (the strong one too, rarely); ``prompt_truncated`` and
  ``prompt_turn2`` on some records only; unicode (accents, CJK, emoji, right-to-left)
  and very long prompts (up to 12,000 characters, beyond the 2,000 of ``public.jsonl``).

The outcomes follow a hidden rule on the prompt (:func:`hidden_rule`), so that a router
*can* learn to win: the free ``hearth/local-7b.q4`` is right on short prompts that hold
digits and mostly wrong on the rest; the cheap ``lynx-mini`` on short prompts without
digits; ``orion-xl`` is nearly always right; the two mid models on most short prompts.
Deterministic for a seed (``random.Random``; the bucket is ``sha256(id) mod 100`` as in
the format).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

__all__ = ["MODELS", "STRONG", "VARIANTS", "generate", "generate_variant", "hidden_rule"]

#: USD per 1M input / output tokens (``sable-m`` ties ``quartz-m``; ``hearth`` is free)
PRICES: dict[str, tuple[float, float]] = {
    "orion-xl": (12.0, 36.0),
    "quartz-m": (2.0, 6.0),
    "sable-m": (2.0, 6.0),
    "lynx-mini": (0.2, 0.6),
    "hearth/local-7b.q4": (0.0, 0.0),
}
MODELS = tuple(PRICES)
STRONG = "orion-xl"
#: left out of prices.json (the records still carry its cost)
UNPRICED = "sable-m"

_TOPICS = (
    "ledger", "harbour", "violin", "glacier", "orbit", "lantern", "meadow", "quarry",
    "canal", "turbine", "saffron", "compass", "archive", "beacon", "falcon", "pottery",
)  # fmt: skip
_VERBS = ("describe", "compare", "estimate", "summarise", "explain", "plan", "list", "rank")
_FILL = ("the", "a", "of", "for", "with", "and", "in", "about", "our", "their", "this")
_UNICODE = (
    "café naïve façade",
    "日本語の質問です",
    "вопрос о погоде",
    "سؤال قصير",
    "🚀✨ emoji 🧪",
    "Ελληνικά γράμματα",
    "mañana über straße",
)


def hidden_rule(prompt: str) -> str:
    """The kind of a prompt the outcomes depend on: ``short-digits``, ``short`` or ``long``."""
    short = len(prompt.split()) <= 14
    if not short:
        return "long"
    return "short-digits" if any(ch.isdigit() for ch in prompt) else "short"


#: P(right) per model and prompt kind
_P_RIGHT: dict[str, dict[str, float]] = {
    "orion-xl": {"short-digits": 0.95, "short": 0.95, "long": 0.9},
    "quartz-m": {"short-digits": 0.8, "short": 0.85, "long": 0.35},
    "sable-m": {"short-digits": 0.75, "short": 0.8, "long": 0.4},
    "lynx-mini": {"short-digits": 0.4, "short": 0.85, "long": 0.1},
    "hearth/local-7b.q4": {"short-digits": 0.92, "short": 0.35, "long": 0.05},
}
#: how often each kind of prompt is drawn
_KINDS = {"short-digits": 0.45, "short": 0.25, "long": 0.3}


def _prompt(rng: random.Random, kind: str) -> str:
    topic = rng.choice(_TOPICS)
    words = [rng.choice(_VERBS), topic]
    n = rng.randint(4, 10) if kind != "long" else rng.randint(30, 90)
    words += [rng.choice(_FILL + _TOPICS) for _ in range(n)]
    if kind == "short-digits":
        words.insert(rng.randrange(1, len(words)), str(rng.randint(2, 9999)))
    elif kind == "long" and rng.random() < 0.5:
        words.insert(rng.randrange(1, len(words)), str(rng.randint(2, 99)))
    if rng.random() < 0.2:  # unicode, as one "word" (a short prompt stays short)
        words.insert(rng.randrange(1, len(words)), rng.choice(_UNICODE).replace(" ", "_"))
    text = " ".join(words)
    if kind == "long" and rng.random() < 0.1:  # very long
        text = (text + " ") * max(1, 12_000 // (len(text) + 1))
    return text.strip() + "?"


def _quality(rng: random.Random, model: str, kind: str, scale: str) -> dict[str, Any]:
    right = rng.random() < _P_RIGHT[model][kind]
    if scale == "correct":
        return {"correct": int(right)}
    if scale == "0-100":
        return {"score": rng.randint(70, 100) if right else rng.randint(0, 45)}
    return {"score": rng.randint(4, 5) if right else rng.randint(1, 2)}  # 1..5


def _entry(rng: random.Random, model: str, prompt: str, kind: str, scale: str) -> dict[str, Any]:
    in_tok = max(1, len(prompt) // 4)
    out_tok = {"long": rng.randint(150, 600)}.get(kind, rng.randint(10, 120))
    if model == STRONG:
        out_tok += 40
    pin, pout = PRICES[model]
    cost = round((in_tok * pin + out_tok * pout) / 1e6, 8)
    return {
        **_quality(rng, model, kind, scale),
        "in_tokens": in_tok,
        "out_tokens": out_tok,
        "cost_usd": cost,
    }


_SOURCES = (  # (source id, scale, share of the prompts, task-type field)
    ("lab-quiz", "correct", 0.6, "category"),
    ("panel-judged", "0-100", 0.4, "subject"),
)


def generate(path: Path, seed: int = 1, prompts: int = 400) -> list[dict[str, Any]]:
    """Write ``prompts`` records (+ 10 of ``tiny-eval``) to ``path`` and ``prices.json``
    beside it; returns the records."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    plan = [(s, sc, round(prompts * share), key) for s, sc, share, key in _SOURCES]
    plan.append(("tiny-eval", "1-5", 10, "category"))
    for source, scale, n, key in plan:
        for i in range(n):
            kind = rng.choices(list(_KINDS), weights=list(_KINDS.values()))[0]
            prompt = _prompt(rng, kind)
            assert hidden_rule(prompt) == kind, (kind, prompt)
            rid = f"{source}/{i:04d}"
            rec: dict[str, Any] = {"id": rid, "source": source}
            rec[key] = rng.choice(("facts", "planning", "wordplay"))
            if len(prompt) > 2000 and rng.random() < 0.5:  # cut as public.jsonl does
                prompt, rec["prompt_truncated"] = prompt[:2000], True
            rec["prompt"] = prompt
            if source == "panel-judged" and rng.random() < 0.3:
                rec["prompt_turn2"] = "and now say it in 12 words, ünïcode welcome"
            models = {}
            for m in MODELS:
                missing = rng.random() < (0.02 if m == STRONG else 0.05)
                if missing and source != "tiny-eval":
                    continue
                models[m] = _entry(rng, m, prompt, kind, scale)
            rec["models"] = models
            rec["bucket"] = int(hashlib.sha256(rid.encode()).hexdigest(), 16) % 100
            out.append(rec)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), "utf-8")
    prices = {
        "unit": "USD per 1M tokens",
        "models": {
            m: {"input": p[0], "output": p[1], "source": "made up (benchmarks/routing_foreign)"}
            for m, p in PRICES.items()
            if m != UNPRICED
        },
    }
    (path.parent / "prices.json").write_text(json.dumps(prices, indent=1) + "\n")
    return out


# ---------------------------------------------------------------------- variants
#
# More shapes of data, one source each (``--variant NAME``): other numbers of models,
# price spreads, score scales, categories that carry the signal or carry none, a model
# strong on one category only, noisy judges. The outcome of a model on a prompt is drawn
# from P(right | prompt kind) (:func:`hidden_rule`) times its factor for the record's
# category; a noisy judge replaces that many outcomes by a coin.

#: per model: (USD per 1M input, output), P(right) per prompt kind, factor per category
_VModel = tuple[tuple[float, float], dict[str, float], dict[str, float]]


def _m(price: float, sd: float, s: float, lg: float, **cat: float) -> _VModel:
    return (price, 3 * price), {"short-digits": sd, "short": s, "long": lg}, cat


#: name -> (score scale, judge noise, categories, models: strongest first)
VARIANTS: dict[str, tuple[str, float, tuple[str, ...], dict[str, _VModel]]] = {
    # two models, 0/1, a 100x price spread; the cheap one fails "proof" prompts
    "pair-category": (
        "correct",
        0.0,
        ("proof", "chat", "lookup"),
        {
            "atlas-pro": _m(10.0, 0.95, 0.95, 0.9),
            "wren-lite": _m(0.1, 0.85, 0.85, 0.6, proof=0.2),
        },
    ),
    # three models on 0..100 with a noisy judge (20 % of outcomes a coin); categories
    # without signal; a narrow spread (the cheapest costs a third of the dearest)
    "noisy-narrow": (
        "0-100",
        0.2,
        ("alpha", "beta"),
        {
            "kestrel-3": _m(3.0, 0.9, 0.9, 0.85),
            "kestrel-2": _m(2.0, 0.8, 0.85, 0.5),
            "kestrel-1": _m(1.0, 0.85, 0.6, 0.2),
        },
    ),
    # eight models on 1..5; one ("glyph-code") strong only on "code", weak elsewhere
    "eight-specialist": (
        "1-5",
        0.1,
        ("code", "prose", "trivia", "math"),
        {
            "titan-ultra": _m(15.0, 0.95, 0.95, 0.92),
            "titan-plus": _m(8.0, 0.9, 0.9, 0.85),
            "glyph-code": _m(0.5, 0.3, 0.3, 0.2, code=3.0),
            "mote-s": _m(1.0, 0.8, 0.85, 0.4, code=0.4),
            "mote-xs": _m(0.3, 0.7, 0.8, 0.2, code=0.3),
            "pebble-1": _m(0.05, 0.9, 0.3, 0.05, code=0.5),
            "pebble-2": _m(0.05, 0.5, 0.5, 0.1),
            "moss-0": _m(0.0, 0.2, 0.2, 0.05),
        },
    ),
    # four models on 1..10 whose scores never reach 6 (a source that reads as 1..5
    # unless its scale is given: ``--score-scale 1:10``)
    "low-judged": (
        "1-10-low",
        0.05,
        ("facts", "planning"),
        {
            "cobalt-l": _m(6.0, 0.9, 0.9, 0.85),
            "cobalt-m": _m(1.5, 0.85, 0.8, 0.5),
            "cobalt-s": _m(0.4, 0.85, 0.5, 0.2),
            "cobalt-xs": _m(0.1, 0.6, 0.3, 0.05),
        },
    ),
}


def _vscore(rng: random.Random, right: bool, scale: str) -> dict[str, Any]:
    if scale == "correct":
        return {"correct": int(right)}
    if scale == "0-100":
        return {"score": rng.randint(65, 100) if right else rng.randint(0, 50)}
    if scale == "1-5":
        return {"score": rng.choice((4, 5)) if right else rng.choice((1, 2, 3))}
    return {"score": rng.choice((4, 4.5, 5)) if right else rng.choice((1, 1.5, 2, 3))}


def generate_variant(
    path: Path, variant: str, seed: int = 1, prompts: int = 300
) -> list[dict[str, Any]]:
    """Write ``prompts`` records of one source shaped as :data:`VARIANTS` ``[variant]``
    to ``path`` (no prices.json: the records carry their costs); returns the records."""
    scale, noise, cats, models = VARIANTS[variant]
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(prompts):
        kind = rng.choices(list(_KINDS), weights=list(_KINDS.values()))[0]
        prompt = _prompt(rng, kind)
        cat = rng.choice(cats)
        rid = f"{variant}/{i:04d}"
        entries = {}
        for name, (price, p_kind, factor) in models.items():
            p = min(1.0, p_kind[kind] * factor.get(cat, 1.0))
            right = rng.random() < p
            if rng.random() < noise:  # the judge's coin
                right = rng.random() < 0.5
            in_tok = max(1, len(prompt) // 4)
            out_tok = rng.randint(150, 600) if kind == "long" else rng.randint(10, 120)
            entries[name] = {
                **_vscore(rng, right, scale),
                "in_tokens": in_tok,
                "out_tokens": out_tok,
                "cost_usd": round((in_tok * price[0] + out_tok * price[1]) / 1e6, 8),
            }
        bucket = int(hashlib.sha256(rid.encode()).hexdigest(), 16) % 100
        out.append(
            {"id": rid, "source": variant, "category": cat, "prompt": prompt,
             "models": entries, "bucket": bucket}
        )  # fmt: skip
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), "utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.routing_foreign_data")
    ap.add_argument("out", metavar="OUT.jsonl")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=None, help="default 400 (300 for a variant)")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default=None)
    a = ap.parse_args(argv)
    if a.variant:
        recs = generate_variant(Path(a.out), a.variant, a.seed, a.prompts or 300)
        print(f"{len(recs)} records of {a.variant} in {a.out}")
        return 0
    recs = generate(Path(a.out), a.seed, a.prompts or 400)
    print(f"{len(recs)} records in {a.out}; prices.json beside it (without {UNPRICED})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
