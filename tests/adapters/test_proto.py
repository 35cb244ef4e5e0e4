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
@given(u32, u32, u63, fin, fin, fin, u32)
def test_estimate_codec_matches_betterproto(i, o, usd, lat, var, conf, age) -> None:
    e = CostEstimate(i, o, usd, lat, var, conf, age)
    ref = pb.Estimate(i, o, usd, lat, var, conf, age)
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


# ---------------------------------------------------------------- varints (ATP-ADAPT-016)


@given(st.integers(0, 2**64 - 1))
def test_every_uint64_varint_round_trips(value: int) -> None:
    raw = codec._varint(value)
    assert len(raw) <= 10
    assert codec._read_varint(raw, 0) == (value, len(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff" * 9 + b"\x02",  # 10 bytes, 2**64: one bit too many
        b"\xff" * 9 + b"\x3f",  # the 70-bit varint of issue 9
        b"\x80" * 10 + b"\x00",  # 11 bytes, even if the value is small
    ],
)
def test_overlong_varints_are_refused(raw: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec._read_varint(raw, 0)
    with pytest.raises(codec.DecodeError):
        codec.decode_chunk(b"\x20" + raw)  # usd_micros
    with pytest.raises(codec.DecodeError):
        codec.decode_estimate(b"\x18" + raw)  # usd_micros


def test_largest_uint64_usd_micros_is_accepted() -> None:
    chunk = codec.decode_chunk(codec.encode_chunk(Chunk("x", 0.5, 1, 2**64 - 1, True)))
    assert chunk.usd_micros == 2**64 - 1


# ---------------------------------------------------------------- retry hints (ATP-ADAPT-015)


def _rpc_messages() -> tuple[type, type]:
    """google.rpc.Status and RetryInfo built by protobuf itself from their definitions
    (google/rpc/status.proto, error_details.proto), as an independent codec."""
    pytest.importorskip("google.protobuf")  # with grpcio-tools, a dev dependency
    from google.protobuf import (
        any_pb2,
        descriptor_pb2,
        descriptor_pool,
        duration_pb2,
        message_factory,
    )

    pool = descriptor_pool.DescriptorPool()
    for mod in (any_pb2, duration_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)
        pool.Add(fdp)
    f = descriptor_pb2.FileDescriptorProto(
        name="test_google_rpc.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/duration.proto"],
    )
    T = descriptor_pb2.FieldDescriptorProto
    status = f.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=T.TYPE_INT32, label=T.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    status.field.add(
        name="details",
        number=3,
        type=T.TYPE_MESSAGE,
        label=T.LABEL_REPEATED,
        type_name=".google.protobuf.Any",
    )
    info = f.message_type.add(name="RetryInfo")
    info.field.add(
        name="retry_delay",
        number=1,
        type=T.TYPE_MESSAGE,
        label=T.LABEL_OPTIONAL,
        type_name=".google.protobuf.Duration",
    )
    pool.Add(f)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.RetryInfo")),
    )


@given(st.integers(0, 2**31 - 1), st.text(max_size=20))
@settings(max_examples=50)
def test_retry_status_agrees_with_protobuf(ms: int, message: str) -> None:
    Status, RetryInfo = _rpc_messages()
    ours = codec.encode_retry_status(8, message, ms)
    parsed = Status()
    parsed.ParseFromString(ours)
    assert parsed.code == 8 and parsed.message == message
    info = RetryInfo()
    assert parsed.details[0].type_url == codec.RETRY_INFO_URL
    info.ParseFromString(parsed.details[0].value)
    assert info.retry_delay.seconds * 1000 + info.retry_delay.nanos // 1_000_000 == ms
    # and theirs, with an unrelated detail first, decodes to the same hint
    theirs = Status(code=8, message=message)
    theirs.details.add(type_url="type.googleapis.com/x.Other", value=b"\x08\x01")
    info2 = RetryInfo()
    info2.retry_delay.seconds, info2.retry_delay.nanos = divmod(ms, 1000)
    info2.retry_delay.nanos *= 1_000_000
    theirs.details.add(type_url=codec.RETRY_INFO_URL, value=info2.SerializeToString())
    assert codec.decode_retry_info(theirs.SerializeToString()) == ms


def test_retry_info_absent_or_malformed() -> None:
    assert codec.decode_retry_info(b"") is None
    assert codec.decode_retry_info(b"\x08\x08\x12\x02no") is None  # code + message only
    with pytest.raises(codec.DecodeError):
        codec.decode_retry_info(b"\x1a\x05ab")  # truncated details
