"""The shared gRPC vocabulary (adapters/grpc/status.py): one table each way, grpc-timeout,
retry hints, the one spelling of the service path."""

from __future__ import annotations

import base64

import pytest
from grpclib.const import Status

from atp_proto.adapters.grpc import status as st
from atp_proto.adapters.proto import codec
from atp_proto.frames import ErrorCode


def test_grpc_status_numbers_match_grpclib() -> None:
    """Our IntEnum and grpclib's enum are the same numbers (the SDK converts by value)."""
    assert {s.name: s.value for s in st.GrpcStatus} == {s.name: s.value for s in Status}


def test_the_two_tables_agree_where_a_code_round_trips() -> None:
    """A vendor's ETIMEOUT / EWINDOW_AGENT reaches the router as the same code."""
    assert st.atp_to_grpc("ENOSUCH") is st.GrpcStatus.INTERNAL
    assert st.GRPC_TO_ATP[st.ATP_TO_GRPC[ErrorCode.ETIMEOUT]] == ErrorCode.ETIMEOUT
    assert st.GRPC_TO_ATP[st.ATP_TO_GRPC[ErrorCode.EWINDOW_AGENT]] == ErrorCode.EWINDOW_AGENT


@pytest.mark.parametrize("seconds", [0.0001, 0.25, 1.0, 99_999.0, 100_000.0, 1e9])
def test_grpc_timeout_round_trip_never_shortens(seconds: float) -> None:
    value = st.encode_grpc_timeout(seconds)
    assert len(value) <= 9  # at most 8 digits and a unit
    # rounded up, so a deadline is never shortened (except beyond the 8-digit cap)
    assert st.parse_grpc_timeout(value) >= min(seconds, 99_999_999) * (1 - 1e-12)


@pytest.mark.parametrize("bad", [b"", b"5", b"m", b"123456789m", b"1.5S", b"5x", b"-1m"])
def test_bad_grpc_timeout(bad: bytes) -> None:
    with pytest.raises(ValueError):
        st.parse_grpc_timeout(bad)


def test_retry_hints() -> None:
    assert st.pushback_ms(b"2750") == 2750
    assert st.pushback_ms(b"-1") is None  # "do not retry"
    assert st.pushback_ms(b"soon") is None
    details = codec.encode_retry_status(8, "busy", 1500)
    assert st.retry_info_ms(base64.b64encode(details).rstrip(b"=")) == 1500
    assert st.retry_info_ms(b"!!!") is None
    assert [st.retry_hint_ms(v) for v in (5, 0, -3, True, None, 2.5)] == [5] + [None] * 5


def test_method_paths() -> None:
    assert st.method_path("Stream") == "/atp.adapter.v1.AdapterService/Stream"
    assert st.SERVICE.startswith("/") and not st.SERVICE.endswith("/")
