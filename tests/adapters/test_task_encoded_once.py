"""A TaskRequest's protobuf encoding (its ``content_json`` and the whole Task message)
is made once per request and kept on it: the preflight's input-size class, every
Estimate and Stream call and ResilientAdapter's per-call deadline copies reuse it.
Differential against the encoding as it was before (json.dumps per field, per call)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_proto.adapters import TaskRequest
from atp_proto.adapters.proto import codec
from atp_proto.router.routing.estimate_cache import size_class


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ref_json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False) if value else ""


def _ref_string(field: int, value: str) -> bytes:
    raw = value.encode()
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw if raw else b""


def _ref_encode(req: TaskRequest) -> bytes:
    """encode_task_request before the encoding was kept (a copy of it)."""
    mt = req.max_tokens
    task = b"".join(
        (
            _ref_string(1, req.task_type),
            _ref_string(2, req.prompt),
            _ref_string(3, _ref_json(req.content)),
            b"" if mt is None else _varint(4 << 3) + _varint(mt),
            _ref_string(5, _ref_json(req.meta)),
            _ref_string(6, req.request_id),
        )
    )
    return _varint(1 << 3 | 2) + _varint(len(task)) + task


def _ref_size_class(req: TaskRequest) -> int:
    n = len(req.prompt.encode())
    if req.content:
        n += len(_ref_json(req.content).encode())
    return n.bit_length()


scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),  # unicode, escapes, surrogates' neighbours
)
value = st.recursive(
    scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
obj = st.dictionaries(st.text(max_size=8), value, max_size=4)
text = st.text(max_size=40)
tokens = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))


@settings(max_examples=300, deadline=None)
@given(text, text, obj, tokens, obj, text, obj, st.integers(1, 10**9))
def test_kept_encoding_equals_the_encoding_per_call(
    tt: str, prompt: str, content: dict, mt: int | None, meta: dict, rid: str, other: dict, ms: int
) -> None:
    req = TaskRequest(tt, prompt, content, mt, meta, rid)
    want = _ref_encode(req)
    assert size_class(req) == _ref_size_class(req)  # first use: the preflight's key
    assert codec.encode_task_request(req) == want
    assert codec.encode_task_request(req) == want  # kept
    later = req.with_deadline_ms(ms)  # ResilientAdapter's per-call copy
    assert later.deadline_ms == ms and later == dataclasses.replace(req, deadline_ms=ms)
    assert codec.encode_task_request(later) == want and size_class(later) == size_class(req)
    # a replaced request is a new one: nothing kept from the old one
    for changed in (
        dataclasses.replace(req, meta=other),
        dataclasses.replace(req, content=other),
        dataclasses.replace(later, prompt=prompt + "x", max_tokens=7),
    ):
        assert codec.encode_task_request(changed) == _ref_encode(changed)
        assert size_class(changed) == _ref_size_class(changed)
    assert codec.decode_task_request(want) == req


@pytest.mark.parametrize("content", [{}, {"a": [1, "é"]}])
def test_each_mapping_is_json_encoded_once_per_request(
    monkeypatch: pytest.MonkeyPatch, content: dict
) -> None:
    encoded: list[object] = []
    real = codec._encode_json

    def spy(value: object) -> str:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(codec, "_encode_json", spy)
    req = TaskRequest("t", "p", content, None, {"qos": "gold"}, "s-1")
    size_class(req)
    for r in (req, req, req.with_deadline_ms(5), req.with_deadline_ms(3)):
        codec.encode_task_request(r)  # Estimate, Stream, retries, failovers
    size_class(req.with_deadline_ms(9))
    assert encoded == ([content] if content else []) + [{"qos": "gold"}]
    # the kept fields are no part of equality or repr
    fresh = TaskRequest("t", "p", content, None, {"qos": "gold"}, "s-1")
    assert fresh == req and repr(fresh) == repr(req)
