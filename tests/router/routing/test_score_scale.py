"""A score scale given by the user (``--score-scale [SOURCE=]LO:HI`` on ``atp routing
train`` and ``atp bench routing``) where a source's scores cannot show theirs: a 1..10
judge that never gave more than 5 is read as 1..5 by default (its best answer quality
1.0); given ``1:10`` it reads as it was meant (5 -> 4/9). A score outside a given scale,
a scale for a source the file does not have, or a malformed value is an error, not a
silent reading. The variants of :mod:`benchmarks.routing_foreign_data` make such data."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_proto.cli import main
from atp_proto.routing_data import DataError, parse_score_scales, read_records
from benchmarks.routing_foreign_data import VARIANTS, generate_variant


def test_parse_score_scales() -> None:
    assert parse_score_scales([]) == {}
    assert parse_score_scales(["1:10"]) == {"*": (1.0, 10.0)}
    got = parse_score_scales(["0:100", "judge=a=1:5"])  # a source name may hold "="
    assert got == {"*": (0.0, 100.0), "judge=a": (1.0, 5.0)}
    for bad, says in [
        ("10", "expects [SOURCE=]LO:HI"),
        ("1:x", "expects [SOURCE=]LO:HI"),
        ("1:nan", "expects [SOURCE=]LO:HI"),
        ("5:5", "LO must be below HI"),
        ("=1:5", "empty source name"),
    ]:
        with pytest.raises(ValueError, match=says.replace("[", r"\[")):
            parse_score_scales([bad])
    with pytest.raises(ValueError, match="given twice"):
        parse_score_scales(["s=1:5", "s=1:10"])


def test_a_given_scale_overrides_the_derived_one(tmp_path: Path) -> None:
    data = tmp_path / "low.jsonl"
    generate_variant(data, "low-judged", seed=3, prompts=60)
    derived = read_records(data)
    given = read_records(data, parse_score_scales(["1:10"]))
    by_source = read_records(data, parse_score_scales(["low-judged=1:10", "0:100"]))
    assert [r.id for r in derived] == [r.id for r in given]
    raws = {o.raw for r in derived for o in r.models.values()}
    assert max(raws) == 5  # never above 5 of 10: derived as 1..5
    for a, b, c in zip(derived, given, by_source, strict=True):
        for m, o in a.models.items():
            assert o.quality == pytest.approx((o.raw - 1) / 4)
            assert b.models[m].quality == pytest.approx((o.raw - 1) / 9)
            assert c.models[m].quality == b.models[m].quality  # the source's own wins
    with pytest.raises(DataError, match="a 'score' of 5, outside the --score-scale 1:4"):
        read_records(data, {"*": (1.0, 4.0)})
    with pytest.raises(DataError, match="names source 'other', which has no 'score'"):
        read_records(data, {"other": (1.0, 10.0)})


def test_the_cli_passes_the_scale_on_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``atp routing train --score-scale`` and ``atp bench routing --score-scale`` (the
    CLI's own entry, in-process): the scale given reaches the reader (a score outside it
    fails the run as bad input, exit 2, naming it), a malformed value is bad usage (exit 2); one line
    each. (Training on the given reading: the test above, on the same reader.)"""
    data = tmp_path / "low.jsonl"
    generate_variant(data, "low-judged", seed=3, prompts=60)
    state = str(tmp_path / "x.sqlite")
    for args, rc, says in [
        (["routing", "train", str(data), "--state", state, "--score-scale", "1-10"], 2, "LO:HI"),
        (["routing", "train", str(data), "--state", state, "--score-scale", "1:4"], 2, "1:4 given"),
        (["bench", "routing", "--data", str(data), "--score-scale", "1:4"], 2, "1:4 given"),
        (["bench", "routing", "--data", str(data), "--score-scale", "x"], 2, "LO:HI"),
    ]:
        assert main(args) == rc, args
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not Path(state).exists()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_are_deterministic_and_readable(tmp_path: Path, variant: str) -> None:
    """Each variant: the same records for a seed, every model on every record, its
    declared score kind, and its strongest model the best on average."""
    a = generate_variant(tmp_path / "a.jsonl", variant, seed=2, prompts=120)
    b = generate_variant(tmp_path / "b.jsonl", variant, seed=2, prompts=120)
    assert a == b and len(a) == 120
    scale, _, cats, models = VARIANTS[variant]
    recs = read_records(tmp_path / "a.jsonl")
    assert all(set(r.models) == set(models) for r in recs)
    assert {r.task_type for r in recs} == set(cats)
    key = "correct" if scale == "correct" else "score"
    assert all(key in e for r in a for e in r["models"].values())
    mean = {m: sum(r.models[m].quality for r in recs) / len(recs) for m in models}
    assert max(mean, key=lambda m: mean[m]) == next(iter(models)), mean
