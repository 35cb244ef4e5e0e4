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
