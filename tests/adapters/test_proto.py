"""The .proto, its generated code, and the hand-written fast codec."""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import atp_proto.adapters.proto.atp.adapter.v1 as pb
from atp_proto.adapters import Chunk, CostEstimate, Health, TaskRequest
from atp_proto.adapters.proto import codec

ROOT = Path(__file__).resolve().parents[2]
PROTO_PKG = ROOT / "atp_proto" / "adapters" / "proto"
GENERATED = [
    "__init__.py",
    "atp/__init__.py",
    "atp/adapter/__init__.py",
    "atp/adapter/v1/__init__.py",
]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (protoc) is not installed: cannot regenerate")
    if shutil.which("sh") is None:
        pytest.skip("no POSIX sh to run scripts/gen_proto.sh")
    subprocess.run(
        ["sh", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, timeout=60
    )
    produced = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py"))
    assert produced == sorted(GENERATED)
    for rel in GENERATED:
        assert filecmp.cmp(tmp_path / rel, PROTO_PKG / rel, shallow=False), (
            f"{rel} differs from the committed code: run scripts/gen_proto.sh"
        )


u32 = st.integers(0, 2**32 - 1)
u63 = st.integers(0, 2**63 - 1)
fin = st.floats(allow_nan=False, allow_infinity=True)
text = st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(text, fin, u32, u63, st.booleans(), text)
def test_chunk_codec_matches_betterproto(content, conf, tokens, usd, final, reason) -> None:
    c = Chunk(content, conf, tokens, usd, final, reason)
    ref = pb.StreamChunk(content, conf, tokens, usd, final, reason)
    assert codec.encode_chunk(c) == bytes(ref)
    assert codec.decode_chunk(bytes(ref)) == c


@settings(max_examples=200, deadline=None)
@given(u32, u32, u63, fin, fin, fin)
def test_estimate_codec_matches_betterproto(i, o, usd, lat, var, conf) -> None:
    e = CostEstimate(i, o, usd, lat, var, conf)
    ref = pb.Estimate(i, o, usd, lat, var, conf)
    assert codec.encode_estimate(e) == bytes(ref)
    assert codec.decode_estimate(bytes(ref)) == e


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["READY", "BUSY", "PAUSE", "DRAINING", "DOWN"]), fin, fin, u32)
def test_health_codec_matches_betterproto(status, p95, err, cap) -> None:
    h = Health(status, p95, err, cap)
    ref = pb.HealthReply(pb.Status[status], p95, err, cap)
    assert codec.encode_health(h) == bytes(ref)
    assert codec.decode_health(bytes(ref)) == h


json_obj = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=8), st.booleans()),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(text, text, json_obj, st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), json_obj, text)
def test_task_codec_matches_betterproto(tt, prompt, content, mt, meta, rid) -> None:
    req = TaskRequest(tt, prompt, content, mt, meta, rid)
    raw = codec.encode_task_request(req)
    parsed = pb.StreamRequest().parse(raw)
    assert (
        parsed.task.prompt == prompt
        and parsed.task.max_tokens == mt
        and parsed.task.request_id == rid
    )
    ref = pb.EstimateRequest(
        pb.Task(tt, prompt, parsed.task.content_json, mt, parsed.task.meta_json, rid)
    )
    assert raw == bytes(ref)
    back = codec.decode_task_request(bytes(ref))
    assert back == req  # integers beyond 2**53 survive (JSON text, not Struct)


def test_decoder_skips_unknown_fields_and_takes_last_value() -> None:
    ref = bytes(pb.StreamChunk(content="a", tokens=3))
    unknown = b"\x78\x05" + b"\x82\x01\x03abc" + b"\x89\x01" + b"\0" * 8 + b"\x95\x01" + b"\0" * 4
    again = bytes(pb.StreamChunk(content="b"))
    assert codec.decode_chunk(ref + unknown + again) == Chunk("b", 0.0, 3, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",
        b"\x18",
        b"\x11\x00",
        b"\x00\x01",
        b"\x0b",
        b"\x0a\x02\xff\xfe",
        b"\x18" + b"\xff" * 11,
    ],
)
def test_decoder_rejects_malformed(data: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode_chunk(data)


def test_task_rejects_non_object_json() -> None:
    raw = bytes(pb.StreamRequest(pb.Task(prompt="x", content_json="[1]")))
    with pytest.raises(codec.DecodeError, match="content_json"):
        codec.decode_task_request(raw)
