"""The sans-IO Connection between an in-memory client and router (spec §6-§12)."""

from __future__ import annotations

import cbor2
import pytest

from atp_proto.frames import (
    HEADER_SIZE,
    MAX_WINDOW,
    BudgetExceeded,
    BudgetReported,
    BudgetWindow,
    CapabilitiesReceived,
    Connection,
    ConnectionClosed,
    ErrorCode,
    Flags,
    Frame,
    FrameType,
    GoingAway,
    HeartbeatAcked,
    Limits,
    LocalProtocolError,
    MessageReceived,
    QoS,
    Role,
    StreamClosedError,
    StreamOpened,
    StreamReset,
    StreamState,
    WindowUpdated,
    encode_frame,
    encode_frames,
)

from .helpers import ConnectionPair, of, one, wire


def opened_pair(**kwargs: object) -> tuple[ConnectionPair, int]:
    p = ConnectionPair(**kwargs)  # type: ignore[arg-type]
    p.handshake()  # each side learns the other's limits
    sid = p.open()
    one(p.to_router(), StreamOpened)
    return p, sid


# -- stream lifecycle (§7.1) -----------------------------------------------------------------


def test_full_exchange_syn_partial_final() -> None:
    """ATP-STREAM-001, ATP-SEQ-002, ATP-SEQ-003: SYN 1, PARTIAL 2, FINAL 3 completes."""
    p = ConnectionPair()
    sid = p.open(
        "q", qos=QoS.GOLD, ttl=8, window=BudgetWindow(4, 500, None), meta={"task_type": "qa"}
    )
    assert sid == 1 and p.client.stream_state(sid) is StreamState.OPEN
    opened = one(p.to_router(), StreamOpened)
    assert (opened.stream_id, opened.msg_seq, opened.qos, opened.ttl) == (1, 1, QoS.GOLD, 8)
    assert opened.window == BudgetWindow(4, 500, None) and opened.meta == {"task_type": "qa"}
    assert opened.ext["window"] == {"max_parallel": 4, "max_tokens": 500}
    assert not opened.text and not opened.end_stream
    assert p.router_saw[0].flags == Flags.SYN and p.router_saw[0].frag_seq == 0
    assert p.router.budget_window(sid) == BudgetWindow(4, 500, None)

    p.router.send_message(sid, cbor2.dumps("part"), more=True)
    p.router.send_message(
        sid, cbor2.dumps("done"), end_stream=True, ext={"telemetry": {"tokens": 3}}
    )
    assert p.router.stream_state(sid) is StreamState.CLOSED  # router FIN completes
    events = p.to_client()
    partial, final = of(events, MessageReceived)
    assert (partial.msg_seq, partial.more, partial.end_stream) == (2, True, False)
    assert (final.msg_seq, final.more, final.end_stream) == (3, False, True)
    assert final.ext == {"telemetry": {"tokens": 3}}
    assert partial.size == HEADER_SIZE + len(cbor2.dumps("part"))
    assert p.client.stream_state(sid) is StreamState.CLOSED
    assert p.client.open_streams == 0 and p.router.open_streams == 0
    assert (
        p.client.frames_sent[FrameType.DATA] == 1 and p.router.frames_received[FrameType.DATA] == 1
    )


def test_client_fin_half_closes_and_router_fin_completes() -> None:
    """ATP-STREAM-005: client FIN half-closes (router may still send); router FIN ends it;
    DATA after the client's FIN is EPROTO."""
    p, sid = opened_pair()
    p.client.send_message(sid, cbor2.dumps("last input"), end_stream=True)
    assert p.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    with pytest.raises(StreamClosedError):
        p.client.send_message(sid, b"more")
    msg = one(p.to_router(), MessageReceived)
    assert msg.end_stream
    assert p.router.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    p.router.send_message(sid, cbor2.dumps("still answering"), more=True)
    assert one(p.to_client(), MessageReceived).more
    # a misbehaving client sends DATA after its FIN
    late = encode_frame(Frame.data(sid, 3, "late"))
    reset = one(p.router.receive_message(late, 0.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and "FIN" in reset.message
    assert p.router.stream_state(sid) is StreamState.CLOSED


def test_router_fin_then_client_is_done() -> None:
    p, sid = opened_pair()
    p.router.send_message(sid, b"", end_stream=True)
    one(p.to_client(), MessageReceived)
    assert p.client.stream_state(sid) is StreamState.CLOSED
    with pytest.raises(StreamClosedError, match="closed"):
        p.client.send_message(sid, b"x")
    with pytest.raises(StreamClosedError):
        p.router.send_message(sid, b"x")
    # frames that cross the close are discarded without error (ATP-FLAG-004)
    late = encode_frames([Frame.data(sid, 2, "x"), Frame.window_update(sid, credit=10)])
    assert p.router.receive_message(late, 0.0) == []
    assert not p.router.has_data_to_send()


def test_syn_with_fin_opens_a_half_closed_stream() -> None:
    p = ConnectionPair()
    sid = p.open(end_stream=True)
    assert p.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    opened = one(p.to_router(), StreamOpened)
    assert opened.end_stream and p.router.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE


def test_stream_ids_must_increase() -> None:
    """ATP-STREAM-002: a SYN on an id not above every id used is EPROTO."""
    p = ConnectionPair()
    p.client.open_stream(b"", stream_id=5, now=None)
    p.to_router()
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(3, 1, flags=Flags.SYN)), 0.0), StreamReset
    )
    assert reset.stream_id == 3 and reset.code == ErrorCode.EPROTO and "increase" in reset.message
    with pytest.raises(LocalProtocolError, match="must exceed"):
        p.client.open_stream(b"", stream_id=5, now=None)
    with pytest.raises(LocalProtocolError):
        p.client.open_stream(b"", stream_id=0x8000_0000, now=None)
    assert p.client.stream_state(3) is StreamState.CLOSED  # below the highest id
    assert p.client.stream_state(6) is StreamState.IDLE


def test_data_on_a_stream_never_opened() -> None:
    """ATP-STREAM-003, ATP-FRAME-012: non-SYN DATA / WINDOW_UPDATE on a new id is EPROTO."""
    p = ConnectionPair()
    for frame in (Frame.data(9, 1, "x"), Frame.window_update(9, credit=5)):
        reset = one(p.router.receive_message(encode_frame(frame), 0.0), StreamReset)
        assert (
            reset.stream_id == 9
            and reset.code == ErrorCode.EPROTO
            and "never opened" in reset.message
        )
    assert not p.router.closed


def test_syn_on_an_open_stream() -> None:
    """ATP-STREAM-004: a second SYN on an open stream is EPROTO on it."""
    p, sid = opened_pair()
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(sid, 2, flags=Flags.SYN)), 0.0),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO and "already open" in reset.message


def test_router_never_opens_streams() -> None:
    """ATP-STREAM-006: a SYN from a router is EPROTO at the client."""
    p = ConnectionPair()
    with pytest.raises(LocalProtocolError, match="only clients"):
        p.router.open_stream(b"", now=None)
    reset = one(
        p.client.receive_message(encode_frame(Frame.data(2, 1, flags=Flags.SYN)), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EPROTO and reset.stream_id == 2


def test_rst_ends_the_stream_both_ways() -> None:
    """ATP-FLAG-003: RST ends the stream whatever its sequence; queued frames are dropped."""
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"x" * 5000)  # more than the client's window: queued
    assert p.router.outbound_buffered(sid) > 0
    p.client.reset_stream(sid)
    assert p.client.stream_state(sid) is StreamState.CLOSED
    (rst,) = wire(p.client)
    assert rst.flags == Flags.RST and rst.stream_id == sid and rst.msg_seq == 2
    reset = one(p.router.receive_message(encode_frame(rst), 0.0), StreamReset)
    assert reset.code == "RST" and reset.by_peer
    assert p.router.outbound_buffered(sid) == 0 and p.router.open_streams == 0
    p.client.reset_stream(sid)  # already closed: no-op
    assert not p.client.has_data_to_send()


def test_rst_on_a_closed_stream_still_flushing_drops_its_outbox() -> None:
    """ATP-FLAG-003, ATP-STREAM-007: a closed stream holding output is dropped by RST."""
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"x" * 5000, end_stream=True)
    assert p.router.stream_state(sid) is StreamState.CLOSED and p.router.open_streams == 1
    assert (
        p.router.receive_message(
            encode_frame(Frame(flags=Flags.RST, stream_id=sid, msg_seq=9)), 0.0
        )
        == []
    )
    assert p.router.open_streams == 0 and p.router.outbound_buffered(sid) == 0


def test_error_on_a_closed_stream_still_flushing_drops_its_outbox() -> None:
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"x" * 5000, end_stream=True)
    assert p.router.receive_message(encode_frame(Frame.error(sid, "EPREEMPT", "gone")), 0.0) == []
    assert p.router.open_streams == 0


def test_peer_error_on_a_stream_resets_it() -> None:
    """ATP-ERR-003: an ERROR (even with an unknown code) ends the stream; code surfaced."""
    p, sid = opened_pair()
    p.router.send_error(sid, "EVENDOR_X", "custom", retry_after_ms=7)
    assert p.router.stream_state(sid) is StreamState.CLOSED
    p.router.send_error(sid, "EAGAIN", "twice")  # closed: no-op
    reset = one(p.to_client(), StreamReset)
    assert (reset.code, reset.message, reset.retry_after_ms, reset.by_peer) == (
        "EVENDOR_X",
        "custom",
        7,
        True,
    )
    # an ERROR for a stream we do not know is ignored
    assert p.client.receive_message(encode_frame(Frame.error(77, "EPROTO", "?")), 0.0) == []


@pytest.mark.parametrize(
    "ext",
    [{}, {"error": "EPROTO"}, {"error": {"code": 5}}, {"error": {"message": "m"}}],
)
def test_error_frame_without_a_code(ext: dict[str, object]) -> None:
    """ATP-FRAME-015: an ERROR without error.code is EPROTO of the same scope."""
    p, sid = opened_pair()
    reset = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.ERROR, Flags.RST, sid, ext=ext)), 0.0
        ),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO and reset.stream_id == sid
    closed = one(
        p.router.receive_message(encode_frame(Frame(FrameType.ERROR, 0, 0, ext=ext)), 0.0),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.EPROTO


def test_error_retry_is_optional_but_message_is_not() -> None:
    """[ATP-FRAME-015] retry_after_ms that is not a uint is absent; a missing or non-text
    message makes the ERROR malformed: EPROTO of the same scope (issue 9 item 12)."""
    p, sid = opened_pair()
    frame = Frame(
        FrameType.ERROR,
        Flags.RST,
        sid,
        ext={"error": {"code": "EX", "message": "gone", "retry_after_ms": True}},
    )
    reset = one(p.client.receive_message(encode_frame(frame), 0.0), StreamReset)
    assert reset.by_peer and reset.message == "gone" and reset.retry_after_ms is None
    for error in ({"code": "EX"}, {"code": "EX", "message": 3}):
        p, sid = opened_pair()
        frame = Frame(FrameType.ERROR, Flags.RST, sid, ext={"error": error})
        reset = one(p.client.receive_message(encode_frame(frame), 0.0), StreamReset)
        assert not reset.by_peer and reset.code == ErrorCode.EPROTO
        assert not p.client.closed
        frame = Frame(FrameType.ERROR, 0, 0, ext={"error": error})
        closed = one(p.client.receive_message(encode_frame(frame), 0.0), ConnectionClosed)
        assert not closed.by_peer and closed.code == ErrorCode.EPROTO


# -- sequencing (§7.2) -------------------------------------------------------------------------


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


# -- fragmentation and reassembly (§7.3) ---------------------------------------------------------

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


def frag(
    sid: int,
    seq: int,
    fseq: int,
    flags: int = 0,
    ext: dict[str, object] | None = None,
    body: bytes = b"x",
) -> bytes:
    return encode_frame(Frame(FrameType.DATA, flags, sid, seq, fseq, ext=ext, payload=body))


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


# -- credit windows (§8) ---------------------------------------------------------------------------


def test_sender_never_exceeds_credit() -> None:
    """ATP-FLOW-001, ATP-FLOW-003: frames wait in the outbox; what is sent fits the credit."""
    window = 4096
    p = ConnectionPair(client_limits=Limits(initial_window=window))
    p.handshake()
    sid = p.open()
    p.to_router()
    assert p.router.send_credit(sid) == window
    for _ in range(10):
        p.router.send_message(sid, b"z" * 700, more=True)
    sent = wire(p.router)
    assert sum(len(encode_frame(f)) for f in sent) <= window
    assert p.router.send_credit(sid) == window - sum(len(encode_frame(f)) for f in sent)
    assert p.router.outbound_buffered(sid) == 10 * (724) - sum(len(encode_frame(f)) for f in sent)
    assert p.router.send_credit(999) == 0 and p.router.outbound_buffered(999) == 0


def test_receiver_rejects_over_credit() -> None:
    """ATP-FLOW-002: DATA beyond the credit granted is EWINDOW on the stream."""
    p, sid = opened_pair(router_limits=Limits(initial_window=1000))
    events = p.router.receive_message(encode_frame(Frame.data(sid, 2, raw=b"x" * 600)), 0.0)
    assert one(events, MessageReceived).size == 624
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(sid, 3, raw=b"x" * 400)), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EWINDOW and "credit" in reset.message


def test_over_credit_on_the_general_path() -> None:
    """ATP-FLOW-002: a fragment (general path) over the credit is EWINDOW as well."""
    p, sid = opened_pair(router_limits=Limits(initial_window=1000))
    reset = one(
        p.router.receive_message(frag(sid, 2, 0, Flags.CONT, body=b"x" * 2000), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EWINDOW


def test_credit_is_returned_after_acknowledge() -> None:
    """ATP-FLOW-004, ATP-FLOW-005: credit comes back once half the window is consumed."""
    window = 4096
    p, sid = opened_pair(router_limits=Limits(initial_window=window))
    syn_cost = len(encode_frame(p.router_saw[-1]))  # returned at once, batched like the rest
    p.client.send_message(sid, b"a" * 1000)
    m1 = one(p.to_router(), MessageReceived)
    p.router.acknowledge(sid, m1.size)
    assert not p.router.has_data_to_send()  # under half the window: batched
    p.router.acknowledge(sid, 0)  # no-op
    p.router.acknowledge(999, 10)  # unknown: no-op
    p.client.send_message(sid, b"b" * 1000)
    m2 = one(p.to_router(), MessageReceived)
    p.router.acknowledge(sid, m2.size)
    (wu,) = wire(p.router)
    assert wu.type is FrameType.WINDOW_UPDATE and wu.ext == {"credit": syn_cost + m1.size + m2.size}
    before = p.client.send_credit(sid)
    upd = one(p.client.receive_message(encode_frame(wu), 0.0), WindowUpdated)
    assert (
        upd.credit == before + wu.ext["credit"] == p.client.send_credit(sid) and upd.window is None
    )


def test_window_update_zero_and_overflow() -> None:
    """ATP-FLOW-004: an increment of 0 is EPROTO, growing past 2^31-1 is EWINDOW."""
    p, sid = opened_pair()
    reset = one(
        p.client.receive_message(encode_frame(Frame.window_update(sid, credit=0)), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EPROTO and "0" in reset.message
    p, sid = opened_pair()
    huge = MAX_WINDOW - p.client.send_credit(sid) + 1
    reset = one(
        p.client.receive_message(encode_frame(Frame.window_update(sid, credit=huge)), 0.0),
        StreamReset,
    )
    assert reset.code == ErrorCode.EWINDOW
    p, sid = opened_pair()
    exact = MAX_WINDOW - p.client.send_credit(sid)
    assert (
        one(
            p.client.receive_message(encode_frame(Frame.window_update(sid, credit=exact)), 0.0),
            WindowUpdated,
        ).credit
        == MAX_WINDOW
    )


@pytest.mark.parametrize(
    "ext",
    [
        {"credit": -1},
        {"credit": True},
        {"credit": "5"},
        {},
        {"window": 5},
        {"window": {"max_tokens": -1}},
        {"window": {"max_tokens": "x"}},
    ],
)
def test_bad_window_updates(ext: dict[str, object]) -> None:
    """ATP-FLOW-004, ATP-BUDGET-005: malformed WINDOW_UPDATE is EPROTO on the stream."""
    p, sid = opened_pair()
    reset = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.WINDOW_UPDATE, 0, sid, ext=ext)), 0.0
        ),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO


def test_control_frames_on_stream_zero() -> None:
    """ATP-FRAME-012: WINDOW_UPDATE / BUDGET_UPDATE on stream 0 close the connection."""
    for frame in (
        Frame.window_update(0, credit=5),
        Frame(FrameType.BUDGET_UPDATE, 0, 0, ext={"usage": {}}),
    ):
        p = ConnectionPair()
        closed = one(p.client.receive_message(encode_frame(frame), 0.0), ConnectionClosed)
        assert closed.code == ErrorCode.EPROTO


def test_text_stream_without_caps_has_unlimited_credit() -> None:
    """ATP-FLOW-007, ATP-FLOW-008: a browser that sent no CAPABILITIES gets 2^31-1 credit
    and is never sent WINDOW_UPDATE."""
    from .helpers import SEED_SYN

    p = ConnectionPair()
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    assert p.router.send_credit(opened.stream_id) == MAX_WINDOW
    p.router.acknowledge(opened.stream_id, 1 << 20)
    assert not p.router.has_data_to_send()


# -- budget windows (§9) ----------------------------------------------------------------------------


def test_charge_over_the_budget_is_ebudget() -> None:
    """ATP-BUDGET-003: tokens or money past the window raise EBUDGET; usage is recorded."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_tokens=100, max_usd_micros=50))
    p.to_router()
    p.router.charge(sid, tokens=60, usd_micros=10)
    p.router.charge(sid, tokens=40)
    with pytest.raises(BudgetExceeded) as info:
        p.router.charge(sid, tokens=1)
    assert (
        info.value.code == ErrorCode.EBUDGET
        and info.value.stream_id == sid
        and "tokens" in info.value.message
    )
    with pytest.raises(BudgetExceeded, match="usd_micros"):
        p.router.charge(sid, tokens=-1, usd_micros=41)
    assert p.router.usage(sid) == {"tokens": 100, "usd_micros": 51, "parallel": 0}
    p.router.charge(999, tokens=10**9)  # unknown stream: nothing to charge
    assert p.router.usage(999) == {"tokens": 0, "usd_micros": 0, "parallel": 0}


def test_acquire_parallel_over_max_parallel_is_ewindow() -> None:
    """ATP-BUDGET-004: max_parallel calls at once; one more is EWINDOW."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_parallel=2))
    p.to_router()
    p.router.acquire_parallel(sid)
    p.router.acquire_parallel(sid)
    with pytest.raises(BudgetExceeded) as info:
        p.router.acquire_parallel(sid)
    assert info.value.code == ErrorCode.EWINDOW
    p.router.release_parallel(sid)
    p.router.acquire_parallel(sid)
    assert p.router.usage(sid)["parallel"] == 2
    for _ in range(3):
        p.router.release_parallel(sid)
    assert p.router.usage(sid)["parallel"] == 0  # never negative
    p.router.release_parallel(999)
    with pytest.raises(StreamClosedError):
        p.router.acquire_parallel(999)


def test_window_update_lowering_below_usage_ends_the_stream() -> None:
    """ATP-BUDGET-005: a window lowered below what is already used ends it with EBUDGET."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_parallel=4, max_tokens=1000))
    p.to_router()
    p.router.charge(sid, tokens=500)
    p.client.update_window(sid, BudgetWindow(max_tokens=800))
    upd = one(p.to_router(), WindowUpdated)
    assert upd.window == BudgetWindow(None, 800, None)
    assert p.router.budget_window(sid) == BudgetWindow(4, 800, None)  # the others stay
    assert p.client.budget_window(sid) == BudgetWindow(4, 800, None)
    p.client.update_window(sid, BudgetWindow(max_tokens=100))
    reset = one(p.to_router(), StreamReset)
    assert reset.code == ErrorCode.EBUDGET and reset.stream_id == sid
    client_reset = one(p.to_client(), StreamReset)
    assert client_reset.code == ErrorCode.EBUDGET and client_reset.by_peer
    with pytest.raises(StreamClosedError):
        p.client.update_window(sid, BudgetWindow(max_tokens=1))
    assert p.router.budget_window(sid) == BudgetWindow()


def test_client_ignores_budget_windows_from_the_router() -> None:
    p, sid = opened_pair()
    upd = one(
        p.client.receive_message(
            encode_frame(Frame.window_update(sid, window=BudgetWindow(max_tokens=1))), 0.0
        ),
        WindowUpdated,
    )
    assert (
        upd.window == BudgetWindow(max_tokens=1) and p.client.budget_window(sid) == BudgetWindow()
    )


def test_budget_update_router_to_client() -> None:
    """ATP-BUDGET-007, ATP-FRAME-014: BUDGET_UPDATE goes router -> client only."""
    p, sid = opened_pair()
    p.router.send_budget_update(sid, {"tokens": 5, "usd_micros": 1, "parallel": 1})
    rep = one(p.to_client(), BudgetReported)
    assert rep.stream_id == sid and rep.usage == {"tokens": 5, "usd_micros": 1, "parallel": 1}
    # malformed usage or unknown stream: ignored
    assert (
        p.client.receive_message(
            encode_frame(Frame(FrameType.BUDGET_UPDATE, 0, sid, ext={"usage": 3})), 0.0
        )
        == []
    )
    reset = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.BUDGET_UPDATE, 0, sid, ext={"usage": {}})), 0.0
        ),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO and "router only" in reset.message
    with pytest.raises(StreamClosedError):
        p.router.send_budget_update(sid, {})


# -- time (§10) ----------------------------------------------------------------------------------------


def test_ttl_ends_the_stream_with_etimeout() -> None:
    """ATP-TIME-001: the ttl runs from the router's receipt of the SYN."""
    p = ConnectionPair(now=100.0)
    sid = p.open(ttl=8)
    p.to_router()
    assert p.router.next_deadline() == 108.0
    assert p.router.handle_timer(107.9) == []
    events = p.router.handle_timer(108.0)
    reset = one(events, StreamReset)
    assert reset.code == ErrorCode.ETIMEOUT and reset.stream_id == sid and not reset.by_peer
    assert one(p.to_client(), StreamReset).code == ErrorCode.ETIMEOUT
    assert p.router.handle_timer(200.0)[:1] != [reset]


def test_client_side_ttl_needs_now() -> None:
    p = ConnectionPair()
    sid = p.open(ttl=5, now=10.0)
    p2 = p.client.open_stream(b"", ttl=5, now=None)  # without now: no local deadline
    assert p.client.next_deadline() == 15.0
    assert [e.stream_id for e in of(p.client.handle_timer(15.0), StreamReset)] == [sid]
    assert p.client.stream_state(p2) is StreamState.OPEN


def test_heartbeat_is_answered_and_acked() -> None:
    """ATP-TIME-002: HB is answered with HB|ACK and the same payload; RTT reported."""
    p = ConnectionPair(client_heartbeat=15.0)
    assert p.client.next_deadline() == 15.0
    assert p.client.handle_timer(14.0) == []
    p.now = 15.0
    assert p.client.handle_timer(15.0) == []
    r_events = p.to_router()
    assert r_events == []
    hb = p.router_saw[-1]
    assert hb.type is FrameType.DATA and hb.stream_id == 0 and hb.flags == Flags.HB
    p.now = 15.25
    ack = one(p.to_client(), HeartbeatAcked)
    assert ack.rtt == pytest.approx(0.25)
    assert p.client_saw[-1].flags == Flags.HB | Flags.ACK
    assert p.client.next_deadline() == 30.0  # last send at 15.0
    p.client.send_heartbeat(40.0, b"ping-payload")
    p.now = 40.0
    p.to_router()
    assert bytes(p.client_saw[-1].payload) == b"" and p.router.has_data_to_send()
    p.to_client()
    assert bytes(p.client_saw[-1].payload) == b"ping-payload"
    # an unsolicited ACK is ignored
    assert p.client.receive_message(encode_frame(Frame(flags=Flags.HB | Flags.ACK)), 41.0) == []


def test_heartbeat_payload_limit_and_hb_flag() -> None:
    """ATP-TIME-003, ATP-FRAME-011: HB payload over 64 bytes is ETOOBIG; DATA on stream 0
    without HB is EPROTO; both connection-level."""
    p = ConnectionPair()
    assert (
        p.router.receive_message(encode_frame(Frame(flags=Flags.HB, payload=b"x" * 64)), 0.0) == []
    )
    assert not p.router.closed and wire(p.router)[0].flags == Flags.HB | Flags.ACK
    closed = one(
        p.router.receive_message(encode_frame(Frame(flags=Flags.HB, payload=b"x" * 65)), 0.0),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.ETOOBIG
    p = ConnectionPair()
    closed = one(p.router.receive_message(encode_frame(Frame(payload=b"x")), 0.0), ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO and "HB" in closed.message


def test_idle_timeout_closes_an_idle_session() -> None:
    """ATP-TIME-004: no open stream and nothing received for idle_timeout_ms."""
    p = ConnectionPair(router_limits=Limits(idle_timeout_ms=60_000))
    assert p.router.next_deadline() == 60.0
    p.router.receive_message(encode_frame(Frame(flags=Flags.HB)), 30.0)  # traffic resets it
    assert p.router.next_deadline() == 90.0
    assert p.router.handle_timer(89.0) == []
    events = p.router.handle_timer(90.0)
    closed = one(events, ConnectionClosed)
    assert closed.code == ErrorCode.ETIMEOUT and not closed.by_peer
    frames = wire(p.router)
    assert frames[-1].stream_id == 0 and frames[-1].error_code == "ETIMEOUT"
    assert p.router.next_deadline() is None


def test_idle_timeout_waits_while_a_stream_is_open() -> None:
    p = ConnectionPair(router_limits=Limits(idle_timeout_ms=1000))
    sid = p.open()
    p.to_router()
    assert p.router.next_deadline() is None
    assert p.router.handle_timer(1e6) == []
    p.router.send_error(sid, ErrorCode.EINTERNAL, "x")
    assert p.router.next_deadline() == 1.0
    assert one(p.router.handle_timer(1e6), ConnectionClosed).code == ErrorCode.ETIMEOUT


def test_no_idle_timeout_when_disabled() -> None:
    p = ConnectionPair(router_limits=Limits(idle_timeout_ms=0))
    assert p.router.next_deadline() is None and p.router.handle_timer(1e9) == []


# -- sessions: drain, max_streams, capabilities, close (§6, §12) ------------------------------------------


def test_drain_refuses_new_syns_and_lets_open_streams_finish() -> None:
    """ATP-SESS-005, ATP-SESS-006, ATP-ERR-004: EDRAINING on stream 0, then on each SYN
    with retry_after_ms; open streams go on."""
    p, sid = opened_pair()
    p.router.start_drain("bye", retry_after_ms=2500)
    p.router.start_drain()  # twice: one announcement
    assert p.router.draining
    away = one(p.to_client(), GoingAway)
    assert away == GoingAway("bye", 2500)
    with pytest.raises(LocalProtocolError) as info:
        p.open()
    assert info.value.code == ErrorCode.EDRAINING
    # a client that ignores it
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(sid + 1, 1, flags=Flags.SYN)), 0.0),
        StreamReset,
    )
    assert reset.code == ErrorCode.EDRAINING and reset.retry_after_ms == 2500
    # the open stream continues both ways
    p.client.send_message(sid, b"in")
    assert one(p.to_router(), MessageReceived)
    p.router.send_message(sid, b"out", end_stream=True)
    assert one(p.to_client(), MessageReceived).end_stream
    assert not p.client.closed and not p.router.closed


def test_max_streams_refusal() -> None:
    """ATP-STREAM-008, ATP-STREAM-007, ATP-SESS-007: a SYN over max_streams is EWINDOW with
    retry_after_ms; once a stream closes its slot is free."""
    p = ConnectionPair(router_limits=Limits(max_streams=2))
    a, b = p.open(), p.open()
    p.to_router()
    c = 3
    reset = one(
        p.router.receive_message(encode_frame(Frame.data(c, 1, flags=Flags.SYN)), 0.0), StreamReset
    )
    assert (
        reset.code == ErrorCode.EWINDOW
        and reset.retry_after_ms is not None
        and reset.stream_id == c
    )
    p.router.send_message(a, b"", end_stream=True)
    p.to_client()
    assert p.router.open_streams == 1
    p.client._highest_id = c  # the client saw its SYN refused
    d = p.open()
    assert one(p.to_router(), StreamOpened).stream_id == d
    assert b in p.router._streams


def test_client_respects_the_peers_max_streams() -> None:
    """ATP-SESS-007: after CAPABILITIES, a client opens no more than max_streams."""
    p = ConnectionPair(router_limits=Limits(max_streams=1))
    p.handshake()
    p.open()
    with pytest.raises(LocalProtocolError) as info:
        p.open()
    assert info.value.code == ErrorCode.EWINDOW


def test_capabilities_exchange() -> None:
    """ATP-SESS-001, ATP-SESS-002, ATP-SESS-007: the router answers the first CAPABILITIES
    only; the limits shape fragmentation and credit."""
    p = ConnectionPair(
        client_limits=Limits(initial_window=8192, max_frame_size=4096),
        router_limits=Limits(initial_window=16384, max_frame_size=2048, max_streams=7),
    )
    p.client.send_capabilities()
    r_events = p.to_router()
    caps = one(r_events, CapabilitiesReceived).caps
    assert (
        caps["versions"] == [1]
        and caps["initial_window"] == 8192
        and caps["max_frame_size"] == 4096
    )
    assert set(caps) >= {
        "max_message_size",
        "max_streams",
        "heartbeat_ms",
        "idle_timeout_ms",
        "features",
    }
    c_events = p.to_client()
    rcaps = one(c_events, CapabilitiesReceived).caps
    assert rcaps["initial_window"] == 16384 and rcaps["max_streams"] == 7
    assert p.client.peer_caps == rcaps and p.router.peer_caps == caps
    p.client.send_capabilities()
    p.to_router()
    assert not p.router.has_data_to_send()  # only the first is answered
    sid = p.open()
    p.to_router()
    assert p.client.send_credit(sid) == 16384 - len(encode_frame(p.router_saw[-1]))
    assert p.router.send_credit(sid) == 8192
    p.client.send_message(sid, b"q" * 10_000)
    p.pump()
    assert max(len(encode_frame(f)) for f in p.router_saw if f.stream_id == sid) <= 24 + 2048


def test_capabilities_edge_cases() -> None:
    """ATP-SESS-003, ATP-FRAME-013: no common version / no caps map: connection EPROTO;
    CAPABILITIES on a stream: stream EPROTO; silly limits are ignored."""
    p = ConnectionPair()
    closed = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, ext={"caps": {"versions": [2]}})), 0.0
        ),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.EPROTO and "version" in closed.message
    p = ConnectionPair()
    closed = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, ext={"caps": [1]})), 0.0
        ),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.EPROTO
    p = ConnectionPair()
    closed = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, ext={"caps": {"versions": 1}})), 0.0
        ),
        ConnectionClosed,
    )
    assert closed.code == ErrorCode.EPROTO
    p, sid = opened_pair()
    reset = one(
        p.router.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, 0, sid, ext={"caps": {}})), 0.0
        ),
        StreamReset,
    )
    assert reset.code == ErrorCode.EPROTO
    p = ConnectionPair()
    silly = {
        "max_frame_size": 10,
        "initial_window": 0,
        "max_streams": -1,
        "versions": [1],
    }
    one(
        p.client.receive_message(
            encode_frame(Frame(FrameType.CAPABILITIES, ext={"caps": silly})), 0.0
        ),
        CapabilitiesReceived,
    )
    assert p.client._peer_frame_size == Limits().max_frame_size
    assert p.client._peer_initial_window == Limits().initial_window
    assert p.client._peer_max_streams == Limits().max_streams
    assert not p.client.has_data_to_send()  # clients do not answer


def test_error_on_stream_zero_closes_the_connection() -> None:
    """ATP-SESS-004, ATP-ERR-002: ERROR on stream 0 (not EDRAINING) ends the session."""
    p, sid = opened_pair()
    p.client.close(ErrorCode.EINTERNAL, "client gives up")
    assert p.client.closed
    p.client.close()  # twice: no-op
    closed = one(p.to_router(), ConnectionClosed)
    assert closed == ConnectionClosed("EINTERNAL", "client gives up", by_peer=True)
    assert p.router.closed and p.router.open_streams == 0
    assert p.router.receive_message(encode_frame(Frame.data(sid, 2, "x")), 1.0) == []
    with pytest.raises(LocalProtocolError, match="connection is closed"):
        p.router.send_message(sid, b"x")
    with pytest.raises(LocalProtocolError, match="closed"):
        p.client.open_stream(b"", now=None)
    p.client.send_heartbeat(1.0)
    p.router.start_drain()
    assert not p.client.has_data_to_send() and not p.router.has_data_to_send()


def test_sending_on_a_closed_connection() -> None:
    p, sid = opened_pair()
    p.router.close()
    with pytest.raises(LocalProtocolError, match="connection is closed"):
        p.router.send_message(sid, b"x", end_stream=True)
    p.router.send_error(sid, "EX", "m")  # no-op
    p.router.reset_stream(sid)  # no-op
    with pytest.raises(StreamClosedError):
        p.router.update_window(sid, BudgetWindow())


def test_error_isolation_between_streams() -> None:
    """ATP-ERR-005: an error on one stream does not end another."""
    p = ConnectionPair()
    a, b = p.open(), p.open()
    p.to_router()
    reset = one(p.router.receive_message(encode_frame(Frame.data(a, 9, "x")), 0.0), StreamReset)
    assert reset.stream_id == a
    p.client.send_message(b, b"fine")
    assert one(p.to_router(), MessageReceived).stream_id == b


def test_data_to_send_coalesces_binary_and_keeps_text_apart() -> None:
    """ATP-WS-005: consecutive binary frames are one message; text frames one each."""
    from .helpers import SEED_SYN

    p = ConnectionPair()
    a, b = p.open(), p.open()
    out = p.client.data_to_send()
    assert len(out) == 1 and isinstance(out[0], bytes)
    assert p.client.queued_bytes == 0
    assert len(of(p.router.receive_message(out[0], 0.0), StreamOpened)) == 2
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    p.router.send_message(a, b"1")
    p.router.send_message(opened.stream_id, b"\x01")
    p.router.send_message(b, b"2")
    p.router.send_message(a, b"3")
    n = p.router.queued_bytes
    out = p.router.data_to_send()
    assert [type(m) for m in out] == [bytes, str, bytes]
    assert sum(len(m) for m in out) == n
    assert p.router.data_to_send() == []


def test_stream_state_helpers() -> None:
    c = Connection(Role.CLIENT, now=0.0)
    assert c.stream_state(1) is StreamState.IDLE and not c.is_text(1)
    assert not c.draining and c.budget_window(1) == BudgetWindow()


def test_connection_errors_in_text_frames() -> None:
    """ATP-FRAME-011, ATP-JSON-006: a text frame breaking a session rule closes it."""
    p = ConnectionPair()
    closed = one(p.router.receive_text('{"type": "CAPABILITIES"}', 0.0), ConnectionClosed)
    assert closed.code == ErrorCode.EPROTO
    (err,) = p.router.data_to_send()
    assert isinstance(err, str) and '"stream_id":0' in err


def test_text_heartbeat_and_window_update() -> None:
    """ATP-TIME-002, ATP-FLOW-008: stream-0 text frames need no stream_id; control frames
    cost no credit."""
    from .helpers import SEED_SYN

    p = ConnectionPair()
    assert p.router.receive_text('{"flags": ["HB"], "payload_b64": "AQI="}', 0.0) == []
    (ack,) = p.router.data_to_send()
    assert isinstance(ack, str) and '"flags":["ACK","HB"]' in ack and '"payload_b64":"AQI="' in ack
    opened = one(p.router.receive_text(SEED_SYN, 0.0), StreamOpened)
    before = p.router._streams[opened.stream_id].recv.credit
    text = '{"type": "WINDOW_UPDATE", "stream_id": "st1", "window": {"max_tokens": 5}}'
    upd = one(p.router.receive_text(text, 0.0), WindowUpdated)
    assert (
        upd.stream_id == opened.stream_id
        and p.router._streams[opened.stream_id].recv.credit == before
    )


def test_rst_for_an_unknown_or_forgotten_stream_is_discarded() -> None:
    """ATP-FLAG-004: RST for a stream that is gone is dropped without an error."""
    p, sid = opened_pair()
    p.router.send_message(sid, b"", end_stream=True)
    p.to_client()
    assert p.router.open_streams == 0
    assert p.router.receive_message(encode_frame(Frame(flags=Flags.RST, stream_id=sid)), 0.0) == []
    assert p.router.receive_message(encode_frame(Frame(flags=Flags.RST, stream_id=99)), 0.0) == []
    assert not p.router.has_data_to_send() and not p.router.closed


def test_frames_for_a_closed_stream_still_flushing() -> None:
    """ATP-FLAG-004, ATP-STREAM-007: after our FIN, while output waits for credit, the
    peer's DATA is discarded and its credit still releases our output."""
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"y" * 3000, end_stream=True)
    assert p.router.stream_state(sid) is StreamState.CLOSED and p.router.open_streams == 1
    assert p.router.receive_message(encode_frame(Frame.data(sid, 2, "late")), 0.0) == []
    _, c_events = p.pump()  # the client's credit releases the rest
    assert bytes(one(c_events, MessageReceived).payload) == b"y" * 3000
    assert p.router.open_streams == 0


def test_bad_window_update_on_a_closed_stream_still_flushing() -> None:
    p, sid = opened_pair(client_limits=Limits(initial_window=1024))
    p.router.send_message(sid, b"y" * 3000, end_stream=True)
    reset = one(
        p.router.receive_message(encode_frame(Frame.window_update(sid, credit=0)), 0.0), StreamReset
    )
    assert reset.code == ErrorCode.EPROTO
    assert p.router.stream_state(sid) is StreamState.CLOSED


@pytest.mark.parametrize("window", [100, 1000, 1024, 1100, 3000, 5000])
def test_small_windows_still_flow(window: int) -> None:
    """ATP-SEQ-008, ATP-FLOW-001: fragments fit the peer's window, however small, so a
    message larger than the window completes instead of waiting forever for credit."""
    p, sid = opened_pair(client_limits=Limits(initial_window=window))
    p.router.send_message(sid, b"w" * 5000, ext={"telemetry": {"tokens": 1}}, end_stream=True)
    _, c_events = p.pump()
    msg = one(c_events, MessageReceived)
    assert bytes(msg.payload) == b"w" * 5000 and msg.ext == {"telemetry": {"tokens": 1}}
    assert all(len(encode_frame(f)) <= window for f in p.client_saw if f.type == FrameType.DATA)


@pytest.mark.parametrize(
    "window", [5, "x", [1], {"max_tokens": -1}, {"max_parallel": True}, {"max_usd_micros": 1.5}]
)
def test_invalid_syn_window_is_refused(window: object) -> None:
    """ATP-BUDGET-008: an invalid SYN window is EPROTO on the stream, never "unlimited"."""
    p = ConnectionPair()
    syn = encode_frame(Frame.data(1, 1, flags=Flags.SYN, ext={"window": window}))
    reset = one(p.router.receive_message(syn, 0.0), StreamReset)
    assert reset.code == ErrorCode.EPROTO and reset.stream_id == 1 and not p.router.closed
    assert p.router.open_streams == 0


def test_router_cap_bounds_the_clients_window() -> None:
    """ATP-BUDGET-001: the effective window is the minimum of the client's and the
    router's cap, also after a WINDOW_UPDATE tries to raise it."""
    p = ConnectionPair()
    sid = p.open(window=BudgetWindow(max_parallel=8, max_tokens=1000))
    p.to_router()
    p.router.cap_window(sid, BudgetWindow(max_parallel=2, max_usd_micros=50))
    assert p.router.budget_window(sid) == BudgetWindow(2, 1000, 50)
    p.router.cap_window(999, BudgetWindow(max_parallel=1))  # unknown stream: no-op
    p.client.update_window(sid, BudgetWindow(max_parallel=10, max_tokens=5000))
    one(p.to_router(), WindowUpdated)
    assert p.router.budget_window(sid) == BudgetWindow(2, 5000, 50)


def test_syn_payload_does_not_pin_a_large_receive_buffer() -> None:
    """ATP-LIMIT-002: a small SYN payload that arrived with a large message is copied, so
    the stream does not keep the whole message alive; a later message is still a view."""
    p = ConnectionPair()
    syn = encode_frame(Frame.data(1, 1, raw=b"tiny", flags=Flags.SYN))
    big = encode_frame(Frame.data(1, 2, raw=b"B" * 100_000))
    events = p.router.receive_message(syn + big, 0.0)
    opened, msg = one(events, StreamOpened), one(events, MessageReceived)
    assert bytes(opened.payload) == b"tiny" and not isinstance(opened.payload, memoryview)
    assert isinstance(msg.payload, memoryview) and msg.payload == b"B" * 100_000
