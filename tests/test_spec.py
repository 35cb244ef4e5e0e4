"""The spec is the source of truth: keep it, its requirement list, and the code in step."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from atp_proto.frames import ErrorCode
from atp_proto.frames._state import table_markdown
from atp_proto.transports.base import quic_error_code, ws_close_code

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "spec" / "atp-v1.md").read_text(encoding="utf-8")
REQ_LINE = re.compile(r"^\*\*\[(ATP-[A-Z]+-\d{3})\]\*\* \((L[123]); ([a-z, ]+)\) ", re.M)


def test_requirements_yaml_is_generated_from_the_spec() -> None:
    rc = subprocess.run(
        [sys.executable, str(ROOT / "spec" / "extract.py"), "--check"], capture_output=True
    )
    assert rc.returncode == 0, rc.stdout.decode()
    doc = yaml.safe_load((ROOT / "spec" / "requirements.yaml").read_text())
    ids = [r["id"] for r in doc["requirements"]]
    assert ids == [m[0] for m in REQ_LINE.findall(SPEC)] and ids  # same IDs, same order
    assert len(ids) == len(set(ids)), "a requirement ID is defined twice"
    for r in doc["requirements"]:
        assert r["level"] in ("L1", "L2", "L3")
        assert set(r["roles"]) <= {"router", "client", "adapter"}
        assert r["keyword"] in ("MUST", "MUST NOT", "SHOULD", "SHOULD NOT", "MAY", "SHALL")


def test_every_normative_sentence_has_an_id() -> None:
    """Outside §1, a prose line using MUST/SHOULD/MAY in capitals is a requirement line."""
    body = SPEC.split("## 2. Terminology", 1)[1]
    in_code = False
    for line in body.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code or line.startswith("|") or not line.strip():
            continue
        if re.search(r"\b(MUST|SHOULD|MAY)\b", line):
            assert REQ_LINE.match(line), f"normative sentence without an ID: {line[:90]}"


def test_ids_referenced_in_tests_exist() -> None:
    known_ids = {m[0] for m in REQ_LINE.findall(SPEC)}
    cited: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        cited |= set(re.findall(r"ATP-[A-Z]+-\d{3}", path.read_text(encoding="utf-8")))
    unknown = cited - known_ids
    assert not unknown, f"tests cite requirement IDs the spec does not define: {sorted(unknown)}"


def test_stream_table_in_spec_is_generated_from_the_code() -> None:
    block = SPEC.split("<!-- BEGIN GENERATED: stream table -->\n", 1)[1]
    block = block.split("\n<!-- END GENERATED: stream table -->", 1)[0]
    assert block == table_markdown()


def test_error_table_matches_the_code() -> None:
    rows = re.findall(r"^\| (E[A-Z_]+) \|.*\| (\d{4}) \| (0x[0-9a-f]+) \|$", SPEC, re.M)
    assert [r[0] for r in rows] == [c.value for c in ErrorCode]
    for code, ws, quic in rows:
        assert ws_close_code(code) == int(ws), code
        assert quic_error_code(code) == int(quic, 16), code


def test_seed_examples_are_quoted_verbatim() -> None:
    """The spec quotes the seed's example frames (conformance/vectors/seed.json, itself
    checked against the seed by tests/test_vectors.py) character for character."""
    from conformance.vectors import seed_frames

    blocks = list(seed_frames().values())
    assert len(blocks) == 3
    for block in blocks:
        assert block in SPEC
