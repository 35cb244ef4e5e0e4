"""The replay adapter (``atp bench routing``): recorded tokens and cost, never correctness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atp_proto.adapters import AdapterError, TaskRequest
from atp_proto.adapters.replay import CONFIDENCE, ReplayAdapter


def _file(tmp_path: Path) -> Path:
    rows = [
        {
            "id": "a",
            "prompt": "first",
            "models": {"m": {"correct": 1, "in_tokens": 10, "out_tokens": 130, "cost_usd": 0.0014}},
        },
        {
            "id": "b",
            "prompt": "second",
            "models": {"m": {"correct": 0, "in_tokens": 10, "out_tokens": 10, "cost_usd": 0.0002}},
        },
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_replays_the_recorded_length_tokens_and_cost(tmp_path: Path) -> None:
    adapter = ReplayAdapter.from_options({"data": str(_file(tmp_path)), "model": "m"})
    chunks = [c async for c in adapter.stream(TaskRequest("qa", "first"))]
    assert chunks[-1].final and chunks[-1].tokens == 140 and chunks[-1].usd_micros == 1400
    assert sum(len(c.content) for c in chunks) == 130 * 4
    assert [c.tokens for c in chunks] == sorted(c.tokens for c in chunks)
    by_id = [c async for c in adapter.stream(TaskRequest("qa", "x", meta={"replay_id": "b"}))]
    assert by_id[-1].tokens == 20


async def test_never_reveals_correctness(tmp_path: Path) -> None:
    """The right and the wrong recorded answer look alike before and during the call:
    the same estimate (a price-list figure, not the prompt's outcome), the same constant
    confidence."""
    adapter = ReplayAdapter.from_options({"data": str(_file(tmp_path)), "model": "m"})
    right = await adapter.estimate(TaskRequest("qa", "first"))
    wrong = await adapter.estimate(TaskRequest("qa", "second"))
    assert right == wrong
    for prompt in ("first", "second"):
        assert {c.confidence async for c in adapter.stream(TaskRequest("qa", prompt))} == {
            CONFIDENCE
        }


async def test_unknown_prompt_and_bad_options(tmp_path: Path) -> None:
    adapter = ReplayAdapter.from_options({"data": str(_file(tmp_path)), "model": "m"})
    with pytest.raises(AdapterError, match="no recorded answer"):
        await adapter.estimate(TaskRequest("qa", "never recorded"))
    with pytest.raises(ValueError, match="required"):
        ReplayAdapter.from_options({"model": "m"})
    with pytest.raises(ValueError, match="no recorded outcome"):
        ReplayAdapter.from_options({"data": str(_file(tmp_path)), "model": "other"})
