"""The router on outcome data shaped unlike ``public.jsonl`` (issue 13: "design for the
format, not for these prompts"): :mod:`benchmarks.routing_foreign_data` makes other
sources and models (a strong one not named gpt-4, a free one, two with the same prices,
a name an adapter may not carry), ``score`` on 0..100 and on 1..5 beside ``correct``,
a source of 10 prompts, models missing on some records, ``subject`` for ``category``,
unicode and very long prompts. The outcomes follow a hidden rule on the prompt, so a
learner can win.

End to end as a user runs it: ``atp routing train | show | export | import`` as
processes, then one replay adapter process per model and the router as a process, on the
held-out prompts; and the malformed lines a file may hold, each a one-line error naming
the line and the field.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from atp_proto.router.routing.learner import store
from atp_proto.routing_data import DataError, Record, adapter_name, read_records, score_scale
from benchmarks._routing_eval import curve_from_points
from benchmarks._routing_run import (
    _pair_records,
    _route,
    _router,
    _row,
    _split,
    _with_adapters,
    load_sources,
)
from benchmarks.routing_foreign_data import MODELS, STRONG, UNPRICED, generate, hidden_rule

ROOT = Path(__file__).resolve().parents[3]
SEED = 1
WEAK = "hearth/local-7b.q4"  #: the free model, the cheapest: the pair's weak one
#: the router's cost weights for the pair (strong-call shares near 25 % and 50 %)
WEIGHTS = (0.25, 0.3)


def _atp(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atp_proto", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def test_generated_data_is_foreign_and_deterministic(tmp_path: Path) -> None:
    """The generator makes what it says, the same for a seed; the reader derives each
    source's score scale (0..100, 1..5) and reads ``subject`` as the task type."""
    a = generate(tmp_path / "a.jsonl", SEED, 200)
    b = generate(tmp_path / "b.jsonl", SEED, 200)
    assert a == b
    prices = json.loads((tmp_path / "prices.json").read_text())["models"]
    assert UNPRICED not in prices and STRONG in prices
    assert not any("gpt" in m or "mixtral" in m for r in a for m in r["models"])
    assert any("prompt_truncated" in r for r in a) and any("prompt_turn2" in r for r in a)
    assert any(len(r["prompt"]) > 4000 for r in a)
    assert any(len(r["models"]) < len(MODELS) for r in a)
    recs = read_records(tmp_path / "a.jsonl")
    by = {s: [r for r in recs if r.source == s] for s in ("lab-quiz", "panel-judged", "tiny-eval")}
    assert len(by["tiny-eval"]) == 10
    raw = {s: [o.raw for r in rs for o in r.models.values()] for s, rs in by.items()}
    assert score_scale(raw["panel-judged"]) == (0.0, 100.0)
    assert score_scale(raw["tiny-eval"]) == (1.0, 5.0)
    scale = {"lab-quiz": (0.0, 1.0), "panel-judged": (0.0, 100.0), "tiny-eval": (1.0, 5.0)}
    for src, rs in by.items():  # normalised to [0, 1] by the source's own scale
        lo, hi = scale[src]
        for o in (o for r in rs for o in r.models.values()):
            assert o.quality == pytest.approx((o.raw - lo) / (hi - lo))
    assert {r.task_type for r in by["panel-judged"]} == {"facts", "planning", "wordplay"}
    # the free model is right on short prompts with digits, seldom elsewhere
    hits = [r.models[WEAK].quality for r in by["lab-quiz"] if WEAK in r.models]
    kinds = [hidden_rule(r.prompt) for r in by["lab-quiz"] if WEAK in r.models]
    on = [q for q, k in zip(hits, kinds, strict=True) if k == "short-digits"]
    off = [q for q, k in zip(hits, kinds, strict=True) if k != "short-digits"]
    assert sum(on) / len(on) > 0.8 and sum(off) / len(off) < 0.35


def _held_pair(records: list[Record], strong: str = STRONG, weak: str = WEAK) -> list[Record]:
    """Held-out records with only the pair's outcomes (the router sees those two)."""
    return [
        Record(
            r.id,
            r.source,
            r.task_type,
            r.prompt,
            r.bucket,
            {m: r.models[m] for m in (strong, weak)},
        )
        for r in records
    ]


@pytest.mark.slow
def test_foreign_data_through_the_cli_and_the_real_router(tmp_path: Path) -> None:
    """[ATP-FEED-007] ``atp routing train`` on the training buckets, ``show``, ``export``,
    ``import``; then the replay adapters and the router as processes route the held-out
    prompts of every source (every model recorded for a prompt a candidate: unicode, very
    long prompts, missing models), and the learner beats random on the pair: APGR through
    the router over two cost weights, against 0.5 for random routing."""
    data = tmp_path / "foreign.jsonl"
    generate(data, SEED, 300)
    state = tmp_path / "state.sqlite"
    out = _atp("routing", "train", str(data), "--state", str(state), "--buckets", "0-59", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert set(summary["models"]) == {adapter_name(m) for m in MODELS}
    assert adapter_name(WEAK) == "hearth_local-7b_q4"
    shown = json.loads(_atp("routing", "show", "--state", str(state), "--json").stdout)
    arms = shown["arms"]
    assert arms[STRONG]["mean_quality"] > 0.85 > arms[adapter_name(WEAK)]["mean_quality"]
    exported = _atp("routing", "export", "--state", str(state))
    assert exported.returncode == 0, exported.stderr
    other = tmp_path / "other.sqlite"
    imp = _atp("routing", "import", "-", "--state", str(other), stdin=exported.stdout)
    assert imp.returncode == 0, imp.stderr
    assert store.dump_json(store.load(other)) == json.loads(exported.stdout)

    sources, _, pair, _ = load_sources(data)
    assert pair == (STRONG, WEAK)
    held = [r for s in sources for r in _split(s, 0.6)[1]]
    assert any(len(r.prompt) > 4000 for r in held)
    assert any(not r.prompt.isascii() for r in held)
    judged = {s.name: _held_pair(_pair_records(_split(s, 0.6)[1], s)) for s in sources[:2]}
    assert set(judged) == {"lab-quiz", "panel-judged"}
    pair_held = [r for rs in judged.values() for r in rs]
    results: dict[Any, list[str]] = {}

    async def body(ports: dict[str, int]) -> None:
        with _router(ports, other, WEIGHTS[0], SEED) as router:
            results["all"], _ = await _route(
                router.url, None, held, feedback=False, progress=None, label="all"
            )
        for w in WEIGHTS:
            with _router(ports, other, w, SEED) as router:
                results[w], _ = await _route(
                    router.url, None, pair_held, feedback=False, progress=None, label="pair"
                )

    trio.run(_with_adapters, data, list(MODELS), tmp_path, body)

    # every held-out prompt answered by a model recorded for it, and not always the same
    assert all(c in r.models for r, c in zip(held, results["all"], strict=True))
    assert len(set(results["all"])) >= 3
    # the pair, RouteLLM's setting, per source (each on its own quality scale): PGR against
    # the strong-call share through the router at two cost weights; random routing has
    # PGR = its share, and APGR 0.5
    for s in sources[:2]:
        recs = judged[s.name]
        points = []
        for w in WEIGHTS:
            chosen = [c for r, c in zip(pair_held, results[w], strict=True) if r.source == s.name]
            row = _row(recs, chosen, s)
            assert 0.1 < row["share"] < 0.8 and row["pgr"] > row["share"] + 0.15, (s.name, w, row)
            points.append((row["share"], row["pgr"]))
        assert curve_from_points(points).apgr > 0.6, (s.name, points)


def _bad(tmp_path: Path, lines: list[str]) -> Path:
    good = {
        "id": "ok",
        "prompt": "fine",
        "models": {"m": {"correct": 1, "in_tokens": 1, "out_tokens": 1, "cost_usd": 0}},
    }
    p = tmp_path / "bad.jsonl"
    p.write_bytes(
        b"".join(x.encode("utf-8", "surrogatepass") + b"\n" for x in [json.dumps(good), *lines])
    )
    return p


def _entry(**fields: Any) -> str:
    m = {"correct": 1, "in_tokens": 3, "out_tokens": 4, "cost_usd": 0.1, **fields}
    return json.dumps(
        {"id": "x", "prompt": "p", "models": {"mod": {k: v for k, v in m.items() if v is not None}}}
    )


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"id": "x", "models": {}}', "field 'prompt' missing"),
        ('{"id": "x", "prompt": "p"}', "field 'models' missing"),
        ('{"id": "ok", "prompt": "p", "models": {}}', "field 'id' 'ok' repeats line 1"),
        ('{"id": "x", "prompt": "p", "models": {}, "bucket": "7"}', "field 'bucket'"),
        ('{"id": "x", "prompt": "p", "models": {}, "category": 3}', "field 'category'"),
        (_entry(cost_usd=None), "model 'mod': field 'cost_usd' missing"),
        (_entry(in_tokens="12"), "model 'mod': field 'in_tokens' is not a number"),
        (_entry(out_tokens=2.5), "model 'mod': field 'out_tokens' must be a whole number"),
        (_entry(cost_usd=-1), "model 'mod': field 'cost_usd' must be a finite number >= 0"),
        (_entry(correct=2), "model 'mod': field 'correct' must be 0 or 1"),
        (_entry(correct=None, score=float("nan")), "model 'mod': field 'score' must be a finite"),
        ('{"id": "x", "prompt": "\\ud800", "models": {}}', "field 'prompt' is not valid UTF-8"),
    ],
)
def test_a_malformed_line_is_named_with_its_field(tmp_path: Path, line: str, says: str) -> None:
    path = _bad(tmp_path, [line])
    with pytest.raises(DataError) as err:
        read_records(path)
    assert str(err.value).startswith(f"{path}:2: ") and says in str(err.value), str(err.value)


def test_malformed_data_fails_the_cli_in_one_line(tmp_path: Path) -> None:
    """``atp routing train`` and ``atp bench routing --data``: exit 2 (bad input), one
    line naming the line and the field, no traceback; bytes that are not UTF-8 are named by
    their line."""
    path = _bad(tmp_path, ["", _entry(cost_usd=None)])
    cases = [
        (
            ("routing", "train", str(path), "--state", str(tmp_path / "s.sqlite")),
            f"{path}:3: model 'mod': field 'cost_usd' missing",
        ),
        (
            ("bench", "routing", "--quick", "--json", "--data", str(path)),
            f"{path}:3: model 'mod': field 'cost_usd'",
        ),
    ]
    for args, says in cases:
        out = _atp(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert says in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    bad_utf8 = tmp_path / "u.jsonl"
    bad_utf8.write_bytes(
        path.read_bytes().split(b"\n")[0] + b"\n" + b'{"id": "y", "prompt": "\xff"}\n'
    )
    with pytest.raises(DataError, match=rf"{bad_utf8}:2: not UTF-8"):
        read_records(bad_utf8)


def test_data_the_bench_cannot_route_is_refused(tmp_path: Path) -> None:
    """Nothing to route between (one model) is said, not an empty report; two models whose
    names become one adapter name are refused, not trained as one arm (``atp routing
    train`` and ``atp bench routing`` say it in one line, exit 1: the CLI cases above)."""
    from atp_proto.router.routing.learner import BanditLearner
    from atp_proto.router.routing.learner.offline import train

    one = tmp_path / "one.jsonl"
    one.write_text(_entry() + "\n")
    with pytest.raises(ValueError, match="no source has two models"):
        load_sources(one)
    clash = tmp_path / "clash.jsonl"
    m = {"correct": 1, "in_tokens": 1, "out_tokens": 1, "cost_usd": 0}
    clash.write_text(json.dumps({"id": "c", "prompt": "p", "models": {"a.b": m, "a_b": m}}) + "\n")
    says = "models 'a.b' and 'a_b' both become adapter name 'a_b'"
    with pytest.raises(DataError, match=says):
        load_sources(clash)
    with pytest.raises(DataError, match=says):
        train(BanditLearner(), read_records(clash))


def test_a_missing_bucket_is_the_formats_hash(tmp_path: Path) -> None:
    """``bucket`` absent: ``sha256(id) mod 100`` as the format defines it (the prompt's
    when the id is absent too, never the file's path), not 0 for every record."""
    import hashlib

    rows = [json.loads(_entry()) | {"id": f"r{i}"} for i in range(20)]
    rows.append({k: v for k, v in rows[0].items() if k != "id"} | {"prompt": "no id"})
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = (read_records(tmp_path / n) for n in ("a.jsonl", "b.jsonl"))
    want = [int(hashlib.sha256(f"r{i}".encode()).hexdigest(), 16) % 100 for i in range(20)]
    assert [r.bucket for r in a[:20]] == want and len(set(want)) > 5
    assert a[20].bucket == b[20].bucket == int(hashlib.sha256(b"no id").hexdigest(), 16) % 100
