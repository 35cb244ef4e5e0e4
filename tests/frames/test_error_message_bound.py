"""An ERROR the core sends about a peer's input has a bounded message (session 6): the
refusal of a duplicate map key quoted the key, so a peer's 400,000-character key came back
as a 400 KB ERROR, and a 30,000-character one in a binary ext as an ERROR whose ext is
larger than a peer's max_ext_size may be (ATP-LIMIT-004: a sender MUST NOT send an ext
larger than the peer's max_ext_size)."""

from __future__ import annotations

import struct

import cbor2
import pytest

from atp_proto.frames import (
    Connection,
    ConnectionClosed,
    ErrorCode,
    FrameDecoder,
    Limits,
    Role,
    StreamReset,
    _cbor,
)
from atp_proto.frames._base import MAX_ERROR_MESSAGE

from .helpers import of, one


def _errors(conn: Connection) -> list[dict[str, object]]:
    out = []
    for data in conn.data_to_send():
        if isinstance(data, str):
            import json

            out.append(json.loads(data))
            continue
        dec = FrameDecoder(Limits(max_frame_size=1 << 30, max_ext_size=1 << 30))
        dec.feed(data)
        out.extend(f.ext["error"] for f in dec if "error" in f.ext)
    return out


@pytest.mark.parametrize("implementation", _cbor.available())
def test_a_duplicate_key_in_a_binary_ext_is_refused_with_a_short_message(
    implementation: str,
) -> None:
    before = _cbor.use(implementation)
    try:
        key = cbor2.dumps("k" * 30_000)
        ext = b"\xa2" + key + b"\x01" + key + b"\x02"
        frame = struct.pack("!BBBBIIHHII", 1, 0, 1, 0, 1, 1, 0, 0, len(ext), 1) + ext + b"\xa0"
        r = Connection(Role.ROUTER, now=0.0)
        reset = one(r.receive_message(frame, 0), StreamReset)
    finally:
        _cbor.use(before)
    assert reset.code == ErrorCode.EPROTO and "duplicate" in reset.message.lower()
    assert len(reset.message) <= MAX_ERROR_MESSAGE
    (err,) = _errors(r)
    assert err["message"] == reset.message
    assert len(cbor2.dumps({"error": err})) < 4 * MAX_ERROR_MESSAGE + 64


def test_a_duplicate_key_in_a_json_frame_is_refused_with_a_short_message() -> None:
    k = "k" * 400_000
    text = (
        '{"type":"DATA","stream_id":1,"flags":["SYN"],"msg_seq":1,"payload":{},'
        f'"x":{{"{k}":1,"{k}":2}}}}'
    )
    r = Connection(Role.ROUTER, now=0.0)
    reset = one(r.receive_text(text, 0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and len(reset.message) <= MAX_ERROR_MESSAGE
    (frame,) = _errors(r)
    assert len(str(frame)) < 2 * MAX_ERROR_MESSAGE


def test_a_connection_error_message_is_bounded_too() -> None:
    key = cbor2.dumps("k" * 30_000)
    ext = b"\xa2" + key + b"\x01" + key + b"\x02"
    frame = struct.pack("!BBBBIIHHII", 1, 2, 0, 0, 0, 0, 0, 0, len(ext), 0) + ext  # stream 0
    r = Connection(Role.ROUTER, now=0.0)
    closed = one(r.receive_message(frame, 0), ConnectionClosed)
    assert len(closed.message) <= MAX_ERROR_MESSAGE and not of([], StreamReset)
    (err,) = _errors(r)
    assert err["message"] == closed.message
