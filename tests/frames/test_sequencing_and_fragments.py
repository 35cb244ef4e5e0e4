"""Sequencing and fragmentation: msg_seq, wrap, reassembly, fragment rules (spec §7.2-§7.3).

Moved whole from tests/frames/test_connection.py (one file per concern)."""

from __future__ import annotations

import pytest

from atp_proto.frames import (
    HEADER_SIZE,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    Limits,
    LocalProtocolError,
    MessageReceived,
    StreamOpened,
    StreamReset,
    encode_frame,
)

from .helpers import ConnectionPair, frag, of, one, opened_pair, wire


@pytest.mark.parametrize(("msg_seq", "frag_seq"), [(3, 0), (1, 0), (2, 1), (0xFFFF_FFFF, 0)])
def test_out_of_order_is_eseq_retry_and_the_session_survives(msg_seq: int, frag_seq: int) -> None:
    """ATP-SEQ-004, ATP-ERR-001: ESEQ_RETRY with retry_after_ms 0 on the stream; the next
    stream works."""
    p, sid = opened_pair()
    bad = encode_frame(Frame.data(sid, msg_seq, "x", frag_seq=frag_seq))
    reset = one(p.router.receive_message(bad, 0.0), StreamReset)
    assert reset.code == ErrorCode.ESEQ_RETRY and reset.stream_id == sid and not reset.by_peer
    (err,) = wire(p.router)
    assert err.error_code == "ESEQ_RETRY" and err.ext["error"]["retry_after_ms"] == 0
    assert p.client.receive_message(encode_frame(err), 0.0)[0] == StreamReset(
        sid, "ESEQ_RETRY", err.ext["error"]["message"], 0, by_peer=True
    )
    assert not p.router.closed
    sid2 = p.open("again")
    assert one(p.to_router(), StreamOpened).stream_id == sid2
    p.router.send_message(sid2, b"ok", end_stream=True)
    assert one(p.to_client(), MessageReceived).end_stream


def test_client_checks_router_sequence_too() -> None:
    """ATP-SEQ-003, ATP-SEQ-004: the router's first message must be SYN.msg_seq + 1."""
    p = ConnectionPair()
    sid = p.client.open_stream(b"", msg_seq=41, now=None)
    opened = one(p.to_router(), StreamOpened)
    assert opened.msg_seq == 41
    p.router.send_message(sid, b"a")
    assert one(p.to_client(), MessageReceived).msg_seq == 42
    reset = one(
        p.client.receive_message(encode_frame(Frame.data(sid, 44, raw=b"b")), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.ESEQ_RETRY


def test_msg_seq_never_wraps_the_last_number_ends_the_stream() -> None:
    """ATP-SEQ-005: sequence numbers do not wrap: the router may use 2^32-1 only for its
    FIN, and must end the stream rather than go past it."""
    p = ConnectionPair()
    sid = p.client.open_stream(b"", msg_seq=0xFFFF_FFFE, now=None)
    p.to_router()
    with pytest.raises(LocalProtocolError):
        p.router.send_message(sid, b"a")  # 2^32-1 without FIN
    p.router.send_message(sid, b"a", end_stream=True)
    (msg,) = of(p.to_client(), MessageReceived)
    assert (msg.msg_seq, msg.end_stream) == (0xFFFF_FFFF, True)


BIG = bytes(range(256)) * (3 * 4096)  # 3 MiB


def test_three_mib_message_both_directions() -> None:
    """ATP-SEQ-006, ATP-SEQ-008, ATP-SEQ-009, ATP-FLOW-001, ATP-FLOW-005: a 3 MiB message
    (12x the window) goes through fragments as credit flows back, in both directions."""
    p = ConnectionPair()
    sid = p.client.open_stream(b"", now=None)
    one(p.to_router(), StreamOpened)
    p.client.send_message(sid, BIG, ext={"k": "v"})
    assert p.client.outbound_buffered(sid) > 0  # blocked on credit
    r_events, _ = p.pump()
    msg = one(r_events, MessageReceived)
    assert bytes(msg.payload) == BIG and msg.ext == {"k": "v"} and msg.msg_seq == 2
    assert p.client.outbound_buffered(sid) == 0
    frags = [f for f in p.router_saw if f.type == FrameType.DATA and f.msg_seq == 2]
    assert len(frags) > 12 and [f.frag_seq for f in frags] == list(range(len(frags)))
    assert all(f.has(Flags.CONT) for f in frags[:-1]) and not frags[-1].has(Flags.CONT)
    assert all(len(encode_frame(f)) <= HEADER_SIZE + Limits().initial_window // 4 for f in frags)
    assert frags[0].ext == {"k": "v"} and all(not f.ext for f in frags[1:])
    p.router.acknowledge(sid, msg.size)

    p.router.send_message(sid, BIG, end_stream=True)
    _, c_events = p.pump()
    back = one(c_events, MessageReceived)
    assert bytes(back.payload) == BIG and back.end_stream
    assert p.client.open_streams == 0 and p.router.open_streams == 0
    finals = [f for f in p.client_saw if f.type == FrameType.DATA and f.has(Flags.FIN)]
    assert len(finals) == 1 and not finals[0].has(Flags.CONT)
    assert any(f.type == FrameType.WINDOW_UPDATE for f in p.client_saw)
    assert any(f.type == FrameType.WINDOW_UPDATE for f in p.router_saw)


def test_large_syn_is_fragmented_and_meta_stays_on_the_first_fragment() -> None:
    """ATP-SEQ-006: SYN and ext on frag 0 only; the reassembled SYN opens the stream."""
    p = ConnectionPair()
    payload = b"s" * 200_000
    sid = p.client.open_stream(payload, meta={"task_type": "qa"}, end_stream=True, now=None)
    r_events, _ = p.pump()
    opened = one(r_events, StreamOpened)
    assert (
        bytes(opened.payload) == payload
        and opened.meta == {"task_type": "qa"}
        and opened.end_stream
    )
    frags = [f for f in p.router_saw if f.stream_id == sid]
    assert frags[0].has(Flags.SYN) and all(not f.has(Flags.SYN) for f in frags[1:])
    assert frags[-1].has(Flags.FIN) and all(not f.has(Flags.FIN) for f in frags[:-1])


def test_small_fragments_with_a_big_ext() -> None:
    """A first fragment whose ext fills the fragment still carries at least one byte."""
    p = ConnectionPair(router_limits=Limits(max_frame_size=2048, initial_window=4096))
    p.handshake()
    sid = p.client.open_stream(b"p" * 3000, meta={"pad": "m" * 1500}, now=None)
    r_events, _ = p.pump()
    assert bytes(one(r_events, StreamOpened).payload) == b"p" * 3000
    assert all(
        len(encode_frame(f)) <= HEADER_SIZE + 2048 for f in p.router_saw if f.stream_id == sid
    )


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        (lambda sid: frag(sid, 2, 1, ext={"k": 1}), "ext is allowed on the first"),
        (lambda sid: frag(sid, 2, 1, flags=Flags.SYN), "SYN"),
        (lambda sid: frag(sid, 2, 1, flags=Flags.CONT | Flags.FIN), "FIN is allowed on the last"),
    ],
)
def test_fragment_rules(second: object, reason: str) -> None:
    """ATP-SEQ-006: SYN, ext only on frag 0; FIN only on the last fragment."""
    p, sid = opened_pair()
    assert p.router.receive_message(frag(sid, 2, 0, Flags.CONT), 0.0) == []
    reset = one(p.router.receive_message(second(sid), 0.0), StreamReset)  # type: ignore[operator]
    assert reset.code == ErrorCode.EPROTO and reason in reset.message


def test_fin_with_cont_on_the_first_fragment() -> None:
    p, sid = opened_pair()
    reset = one(p.router.receive_message(frag(sid, 2, 0, Flags.CONT | Flags.FIN), 0.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO


def test_reassembled_message_too_big() -> None:
    """ATP-SEQ-007: a reassembled message over max_message_size is ETOOBIG."""
    p, sid = opened_pair(router_limits=Limits(max_message_size=3000))
    assert p.router.receive_message(frag(sid, 2, 0, Flags.CONT, body=b"a" * 2000), 0.0) == []
    reset = one(p.router.receive_message(frag(sid, 2, 1, body=b"a" * 2000), 0.0), StreamReset)
    assert reset.code == ErrorCode.ETOOBIG and not p.router.closed


def test_too_many_fragments() -> None:
    """A message of more than 65536 fragments is ETOOBIG (frag_seq is 16 bits)."""
    p, sid = opened_pair()
    rec = p.router._streams[sid]
    rec.reasm.next = 0xFFFF  # as if 65535 fragments had arrived (sending them takes seconds)
    reset = one(p.router.receive_message(frag(sid, 2, 0xFFFF, Flags.CONT), 0.0), StreamReset)
    assert reset.code == ErrorCode.ETOOBIG


def test_empty_fragments_reassemble_to_empty() -> None:
    p, sid = opened_pair()
    assert p.router.receive_message(frag(sid, 2, 0, Flags.CONT, body=b""), 0.0) == []
    msg = one(p.router.receive_message(frag(sid, 2, 1, body=b""), 0.0), MessageReceived)
    assert msg.payload == b""
