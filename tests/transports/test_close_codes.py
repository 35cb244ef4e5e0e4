"""The bindings' close codes for connection-level errors (moved from the core's tests when
the mapping moved from atp_proto.frames to atp_proto.transports.base)."""

from __future__ import annotations

from atp_proto.frames import ErrorCode
from atp_proto.transports.base import error_code_for_ws_close, quic_error_code, ws_close_code


def test_error_code_mappings() -> None:
    """ATP-ERR-002, ATP-QUIC-004: close codes; unknown codes fall back to EPROTO's."""
    assert ws_close_code(ErrorCode.EPROTO) == 1002
    assert ws_close_code("ESEQ_RETRY") == 4001
    assert ws_close_code("EINTERNAL") == 1011
    assert ws_close_code("ENOTACODE") == 1002
    assert quic_error_code(ErrorCode.EPROTO) == 0x100
    assert quic_error_code(ErrorCode.ESEQ_RETRY) == 0x101  # what the checker's close sees
    assert quic_error_code("EINTERNAL") == 0x10C
    assert quic_error_code("ENOTACODE") == 0x100


def test_ws_close_codes_map_back() -> None:
    """The client reads a close code back as the ATP code it stands for (4000 + index)."""
    for code in (ErrorCode.ESEQ_RETRY, ErrorCode.EBUDGET, ErrorCode.EPROTO):
        assert error_code_for_ws_close(ws_close_code(code)) == code


def test_close_codes_of_the_independent_suite() -> None:
    """ATP-ERR-002, ATP-QUIC-004."""
    assert ws_close_code(ErrorCode.EPROTO) == 1002
    assert ws_close_code(ErrorCode.ETOOBIG) == 1009
    assert ws_close_code(ErrorCode.EDRAINING) == 1001
    assert ws_close_code(ErrorCode.ETIMEOUT) == 4000 + list(ErrorCode).index(ErrorCode.ETIMEOUT)
    assert ws_close_code("EWHATEVER") == 1002
    assert quic_error_code(ErrorCode.EPROTO) == 0x100
    assert quic_error_code("EWHATEVER") == 0x100
