"""An ERROR the core sends about a peer's input has a bounded message (session 6): the
refusal of a duplicate map key quoted the key, so a peer's 400,000-character key came back
as a 400 KB ERROR, and a 30,000-character one in a binary ext as an ERROR whose ext is
larger than a peer's max_ext_size may be (ATP-LIMIT-004: a sender MUST NOT send an ext
larger than the peer's max_ext_size)."""

from __future__ import annotations

import json
import struct

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from atp_proto.frames import (
    Connection,
    ConnectionClosed,
    Encoding,
    ErrorCode,
    Flags,
    Frame,
    FrameDecoder,
    Limits,
    Role,
    StreamReset,
    _cbor,
    encode_frame,
)
from atp_proto.frames._base import MAX_ERROR_MESSAGE, _bounded

from .helpers import CI, LIGHT, of, one, opened_pair


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


# -- every ERROR, the application's too (session 7) ------------------------------------
#
# The core cut only its own messages: an application's text (a router relaying an
# adapter's or an upstream's error, a client app's send_error / close) went out whole, and
# one holding a lone surrogate made the ERROR unencodable (LocalProtocolError out of
# send_error, the stream left open). Every ERROR the core queues now goes through the same
# bound, cut between code points (never inside a UTF-8 sequence).

#: any code point, lone surrogates included (hypothesis leaves them out by default),
#: weighted towards the multi-byte UTF-8 ranges and the bound
_ANY_CHAR = st.characters(exclude_categories=())
_WIDE = st.sampled_from(["é", "€", "😀", "\ud800", "\udfff", "a", "\u0301"])
_MESSAGES = st.one_of(
    st.text(_ANY_CHAR, max_size=600),
    st.text(_WIDE, min_size=MAX_ERROR_MESSAGE - 30, max_size=MAX_ERROR_MESSAGE + 30),
)


def _check_bounded(original: str, sent: str) -> None:
    """What the bound promises of ``sent``, the message an ERROR carried for ``original``."""
    assert len(sent) <= MAX_ERROR_MESSAGE
    assert len(sent.encode("utf-8")) <= 4 * MAX_ERROR_MESSAGE  # strict UTF-8: it encodes
    clean = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in original)
    if len(clean) <= MAX_ERROR_MESSAGE:
        assert sent == clean
    else:
        tail = f"... ({len(clean)} characters)"
        assert sent.endswith(tail) and clean.startswith(sent[: -len(tail)])
        assert len(sent) == MAX_ERROR_MESSAGE


@CI
@given(message=_MESSAGES)
def test_the_bound_cuts_between_code_points_and_always_encodes(message: str) -> None:
    _check_bounded(message, _bounded(message))


def _router_with_stream(encoding: Encoding) -> tuple[Connection, int]:
    r = Connection(Role.ROUTER, now=0.0)
    if encoding is Encoding.JSON:
        r.receive_text('{"stream_id":1,"msg_seq":1,"flags":["SYN"],"payload":{"p":1}}', 0)
    else:
        r.receive_message(encode_frame(Frame.data(1, 1, {"p": 1}, flags=Flags.SYN)), 0)
    assert r.data_to_send() == [] and r.open_streams == 1
    return r, 1


def _messages(conn: Connection) -> list[str]:
    """The messages of the ERRORs ``conn`` queued, either encoding (drains its output)."""
    out = []
    for data in conn.data_to_send():
        if isinstance(data, str):
            out.append(json.loads(data)["error"]["message"])
            continue
        dec = FrameDecoder(Limits(max_frame_size=1 << 30, max_ext_size=1 << 30))
        dec.feed(data)
        out.extend(f.ext["error"]["message"] for f in dec if "error" in f.ext)
    return out


@LIGHT
@given(message=_MESSAGES, encoding=st.sampled_from([Encoding.BINARY, Encoding.JSON]))
def test_an_applications_error_message_is_bounded_in_either_encoding(
    message: str, encoding: Encoding
) -> None:
    """send_error (a router relaying an adapter's text), then close: both on the wire
    within the bound, the stream and the session ended."""
    r, sid = _router_with_stream(encoding)
    r.send_error(sid, "EAGENTDOWN", message)
    (sent,) = _messages(r)
    _check_bounded(message, sent)
    assert r.open_streams == 0
    r.close(ErrorCode.EINTERNAL, message)
    (sent,) = _messages(r)
    _check_bounded(message, sent)
    assert r.closed


@LIGHT
@given(message=_MESSAGES)
def test_the_peer_reads_the_bounded_message(message: str) -> None:
    """Through a pair: the client's StreamReset carries what the router's ERROR said."""
    p, sid = opened_pair()
    p.router.send_error(sid, "EAGENTDOWN", message)
    reset = one(p.to_client(), StreamReset)
    assert reset.by_peer and reset.code == "EAGENTDOWN"
    _check_bounded(message, reset.message)


def test_drain_and_close_messages_are_bounded() -> None:
    r = Connection(Role.ROUTER, now=0.0)
    r.start_drain("d" * 5000)
    (drain,) = _messages(r)
    _check_bounded("d" * 5000, drain)
    r.close(ErrorCode.EINTERNAL, "\ud800" + "c" * 5000)
    (closing,) = _messages(r)
    _check_bounded("\ud800" + "c" * 5000, closing)
    assert closing.startswith("\ufffdccc")


def test_a_lone_surrogate_no_longer_breaks_send_error() -> None:
    """Before: LocalProtocolError (the ext could not be encoded) and the stream left open."""
    r, sid = _router_with_stream(Encoding.BINARY)
    r.send_error(sid, "EINTERNAL", "bad \ud800 text")
    assert _messages(r) == ["bad \ufffd text"] and r.open_streams == 0
