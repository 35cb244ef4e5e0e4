"""AdapterError is part of the package's one error tree (issue 10 item 4)."""

from __future__ import annotations

from atp_proto.adapters import AdapterError
from atp_proto.adapters.grpc import GrpcStatus, grpc_error
from atp_proto.frames import ATPError, ErrorCode


def test_adapter_error_is_an_atp_error_with_its_fields() -> None:
    exc = AdapterError(ErrorCode.ETIMEOUT, "slow", adapter="a", streamed=True, retry_after_ms=7)
    assert isinstance(exc, ATPError)
    assert (exc.code, exc.message, exc.retry_after_ms) == (ErrorCode.ETIMEOUT, "slow", 7)
    assert (exc.adapter, exc.streamed, exc.stream_id) == ("a", True, 0)
    assert str(exc) == "a: ETIMEOUT: slow"
    assert str(AdapterError("EPROTO", "bad")) == "adapter: EPROTO: bad"


def test_grpc_status_becomes_an_atp_error() -> None:
    exc = grpc_error(GrpcStatus.UNAVAILABLE, "down", adapter="g", streamed=False)
    assert isinstance(exc, ATPError) and exc.code == ErrorCode.EAGENTDOWN
