"""The language-neutral data: vectors and scenarios validate against their JSON Schemas,
frames.json is what its builder writes, ids are unique, the packaged copy of
requirements.yaml is the spec's."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from conformance.vectors import build_frames

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conformance"


def _schema(name: str) -> dict:
    schema = json.loads((CONF / "schema" / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_vectors_match_their_schema_and_builder() -> None:
    doc = json.loads((CONF / "vectors" / "frames.json").read_text())
    jsonschema.validate(doc, _schema("vectors.schema.json"))
    assert doc == json.loads(json.dumps(build_frames.document())), (
        "run python -m conformance.vectors.build_frames"
    )
    ids = [v["id"] for v in doc["vectors"]]
    assert len(ids) == len(set(ids))
    assert sum("error" in v for v in doc["vectors"]) >= 25


def test_scenarios_match_their_schema() -> None:
    schema = _schema("scenario.schema.json")
    ids: list[str] = []
    files = sorted((CONF / "scenarios").glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        doc = yaml.safe_load(path.read_text())
        jsonschema.validate(doc, schema)
        ids += [c["id"] for c in doc["cases"]]
    assert len(ids) == len(set(ids))


def test_a_bad_vector_is_refused_by_the_schema() -> None:
    bad = {
        "description": "x",
        "vectors": [
            {
                "id": "a",
                "title": "t",
                "requirements": ["ATP-FRAME-001"],
                "hex": "00",
                "frames": [],
                "error": "EPROTO",
            }
        ],
    }
    try:
        jsonschema.validate(bad, _schema("vectors.schema.json"))
    except jsonschema.ValidationError:
        return
    raise AssertionError("a vector with both frames and error passed the schema")


def test_packaged_requirements_are_the_spec() -> None:
    assert (CONF / "requirements.yaml").read_text() == (
        ROOT / "spec" / "requirements.yaml"
    ).read_text()


def _batches(steps: object) -> list[list[dict]]:
    """Every ``send_batch`` of a scenario's steps, ``repeat`` and ``other_session`` included."""
    out: list[list[dict]] = []
    if isinstance(steps, list):
        for step in steps:
            out += _batches(step)
    elif isinstance(steps, dict):
        if isinstance(steps.get("send_batch"), list):
            out.append(steps["send_batch"])
        for value in steps.values():
            out += _batches(value)
    return out


def test_each_batch_holds_one_streams_frames() -> None:
    """A batch is one binary message over WebSocket; over QUIC each ATP stream has its own
    QUIC stream (ATP-QUIC-002), so frames of two streams could not share one there nor keep
    their order: a case that batched them would test something else over QUIC. The runner
    refuses such a batch; no case (scenario or QUIC binding case) has one."""
    from conformance.roles._quic_cases import BINDING

    batches: list[list[dict]] = []
    for path in sorted((CONF / "scenarios").glob("*.yaml")):
        batches += _batches(yaml.safe_load(path.read_text())["cases"])
    batches += _batches([steps for *_, steps in BINDING])
    assert len(batches) >= 10
    for batch in batches:
        assert len({m.get("stream_id", 0) for m in batch}) == 1, batch
