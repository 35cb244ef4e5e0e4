"""Random interleavings of both directions' frames between a client and a router core, with
a hostile peer's frames mixed into the client's: the invariants the core owes whatever it
is fed (session 6).

Each example runs one conversation over one binding (WebSocket messages, a byte stream cut
at random points, or QUIC's per-stream channels): the client opens streams, sends, resets
and acknowledges; the router's application answers with PARTIALs, FINALs and ERRORs; the
two cores' output is delivered in random order and chunking, time advances through the
timers; and frames of every type with random header fields and ext (valid, malformed,
out of sequence, for streams open, closed or never opened) are injected into the
router's input. After every step:

* nothing raises out of ``receive_*`` / ``handle_timer``; a local call refuses only with
  :class:`LocalProtocolError` (its subclasses);
* every ERROR frame a core sends, and every error event it reports of its own, carries a
  code of the spec's registry (§11) and a message;
* state is bounded: streams ≤ max_streams, a reassembly ≤ max_message_size, what the
  decoder keeps < one frame, the receive credit within the window we granted and the send
  credit within 0 … 2³¹−1; the messages an application holds unconsumed on a stream cost
  at most the window (memory per stream is bounded by it, ATP-FLOW);
* a stream ends once: after a core's ERROR or RST on a stream, or the router's FIN, it
  sends nothing but ERROR there (the answer to a SYN repeating the id, ATP-STREAM-002),
  never DATA or WINDOW_UPDATE (ATP-STREAM-011); after the client's FIN, no DATA but a
  reset;
* the connection is open, or closed with at most one ERROR on stream 0 of its own, after
  which it sends nothing more.

:func:`conversation` is one such run, from a :class:`random.Random`: tests/frames/
test_interleavings.py draws them with hypothesis, scripts/fuzz_core.py runs them by the
thousand.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import cbor2

from atp_proto.frames import (
    Connection,
    ConnectionClosed,
    ErrorCode,
    Event,
    Frame,
    FrameDecoder,
    FrameType,
    Limits,
    LocalProtocolError,
    MessageReceived,
    Role,
    StreamOpened,
    StreamReset,
)
from atp_proto.frames._types import FIN_BIT, MAX_WINDOW, RST_BIT

CODES = {c.value for c in ErrorCode}
_HEADER = struct.Struct("!BBBBIIHHII")
BIG_LIMITS = Limits(max_frame_size=1 << 30, max_ext_size=1 << 30, max_depth=64)
_EXTS: list[dict[str, Any]] = [
    {"credit": 1},
    {"credit": 4096},
    {"credit": 0},
    {"credit": MAX_WINDOW},
    {"credit": MAX_WINDOW + 1},
    {"credit": -1},
    {"credit": 1.5},
    {"window": {"max_tokens": 10}},
    {"window": 3},
    {"error": {"code": "EPROTO", "message": "x"}},
    {"error": {"code": "EDRAINING", "message": "bye", "retry_after_ms": 5}},
    {"error": {"code": 1}},
    {"caps": {"versions": [1], "initial_window": 2048, "max_streams": 3}},
    {"caps": {"versions": [2]}},
    {"usage": {"tokens": 1, "usd_micros": 2, "parallel": 0}},
    {"session_id": None},
    {"session_id": "s" * 129},
    {"meta": 5},
    {"meta": {"fanout": 99}},
    {"x-vendor": [1, {"a": None}]},
    {"telemetry": {"tokens": 1}},
    {"type": "reserved"},
]
_EXTS_BY_TYPE: dict[int, list[dict[str, Any]]] = {
    0: [e for e in _EXTS if set(e) & {"meta", "window", "session_id", "telemetry", "type"}],
    1: [e for e in _EXTS if set(e) & {"credit", "window"}],
    2: [e for e in _EXTS if "caps" in e],
    3: [e for e in _EXTS if "usage" in e],
    4: [e for e in _EXTS if "error" in e],
}
_TASK = cbor2.dumps({"type": "agent.task", "content": {"prompt": "hi"}})


class Side:
    """One core, what it has sent (decoded), and the invariants of its output."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ended: set[int] = set()  # streams it ended: ERROR, RST, the router's FIN
        self.half_closed: set[int] = set()  # the client's FIN: only a reset may follow
        self.conn_errors = 0  # ERROR frames it sent on stream 0
        self.closed_at: int | None = None  # frames sent when it closed
        self.sent = 0
        self.events: list[Event] = []

    def check_output(self, frames: list[Frame]) -> None:
        for f in frames:
            self.sent += 1
            assert self.closed_at is None or self.conn_errors, "output after the close"
            if f.type == FrameType.ERROR:
                err = f.ext["error"]
                assert err["code"] in CODES, err
                assert isinstance(err["message"], str) and err["message"], err
            sid = f.stream_id
            if sid == 0:
                if f.type == FrameType.ERROR and err["code"] != ErrorCode.EDRAINING:
                    self.conn_errors += 1
                    assert self.conn_errors == 1, "a second connection ERROR"
                continue
            if sid in self.ended:
                assert f.type == FrameType.ERROR, f"{f!r} after the stream ended"
            if sid in self.half_closed and f.type == FrameType.DATA:
                assert f.flags & RST_BIT, f"{f!r} after the client's FIN"
            if f.type == FrameType.ERROR or f.flags & RST_BIT:
                if sid <= self.conn._highest_id:  # an id never used ends nothing
                    self.ended.add(sid)
            elif f.type == FrameType.DATA and f.flags & FIN_BIT:
                # the router's FIN completes the stream, the client's half-closes it
                (self.ended if self.conn.role is Role.ROUTER else self.half_closed).add(sid)

    def check_events(self, events: list[Event]) -> None:
        self.events += events
        for ev in events:
            if isinstance(ev, StreamReset | ConnectionClosed) and not ev.by_peer:
                assert ev.code in CODES and ev.message, ev

    def check_state(self) -> None:
        c = self.conn
        if c.closed:
            assert not c._streams
            return
        lim = c.limits
        assert len(c._streams) <= lim.max_streams
        assert c._decoder.buffered < 24 + lim.max_frame_size
        for dec in c._channels.values():
            assert dec.buffered < 24 + lim.max_frame_size
        for rec in c._streams.values():
            assert rec.reasm.bytes <= lim.max_message_size
            assert 0 <= rec.recv.credit <= max(lim.initial_window, 65536 * 16), rec
            assert 0 <= rec.send.credit <= MAX_WINDOW, rec
            assert rec.send.outbox_bytes == sum(cost for _, cost in rec.send.outbox)


def _decode(side: Side, items: list[bytes]) -> list[Frame]:
    frames: list[Frame] = []
    for data in items:
        dec = FrameDecoder(BIG_LIMITS)
        dec.feed(data)
        frames.extend(dec)
    side.check_output(frames)
    return frames


def hostile(rnd: random.Random, known: list[int]) -> bytes:
    """One frame with random fields, for a stream open, closed or never opened."""
    others = [0, max(known, default=0) + 2, 0x7FFFFFFF, rnd.randint(1, 40)]
    sid = rnd.choice(known if known and rnd.random() < 0.6 else others)
    ftype = rnd.choice([0, 0, 0, 1, 1, 2, 3, 4, 9])
    flags = rnd.choice([0, 1, 4, 8, 16, 32, 64, 72, 2, 128, rnd.randint(0, 255)])
    if rnd.random() < 0.5:  # an ext of the frame's own type, valid or not
        ext = rnd.choice(_EXTS_BY_TYPE.get(ftype, [{}]))
    else:
        ext = rnd.choice([{}, {}, *_EXTS])
    ext_raw = cbor2.dumps(ext) if ext else b""
    payload = rnd.choice([b"", b"x", _TASK, rnd.randbytes(rnd.randint(0, 300)), b"\xc1\x00"])
    header = _HEADER.pack(
        1 if rnd.random() < 0.97 else rnd.randint(0, 3),
        ftype,
        flags,
        rnd.choice([0, 0, 1, 3, 4]),
        sid,
        rnd.choice([0, 1, 2, 3, 4, rnd.randint(0, 9), 0xFFFFFFFF, 0xFFFFFFFE]),
        rnd.choice([0, 0, 1, 2, 0xFFFF]),
        rnd.choice([0, 0, 1, 30]),
        len(ext_raw),
        len(payload),
    )
    return header + ext_raw + payload


def _cut(rnd: random.Random, data: bytes) -> list[bytes]:
    if len(data) < 2 or rnd.random() < 0.5:
        return [data]
    cuts = sorted(rnd.sample(range(1, len(data)), min(3, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _local(call: Any, *args: Any, **kwargs: Any) -> Any:
    """A call of the application: it may be refused, only as a LocalProtocolError."""
    try:
        return call(*args, **kwargs)
    except LocalProtocolError:
        return None


def conversation(rnd: random.Random, binding: str, trace: list[str] | None = None) -> None:
    """One random conversation over ``binding``, its invariants checked at every step
    (``trace``: what was delivered to whom, for a report)."""
    now = 0.0
    small = rnd.random() < 0.5
    client = Side(
        Connection(
            Role.CLIENT,
            limits=Limits(initial_window=4096, max_message_size=20_000) if small else Limits(),
            now=now,
        )
    )
    router = Side(
        Connection(
            Role.ROUTER,
            limits=Limits(initial_window=2048, max_streams=4, max_message_size=8000)
            if small
            else Limits(max_streams=8),
            now=now,
        )
    )
    to_router: list[tuple[int, bytes]] = []  # (channel, data)
    to_client: list[tuple[int, bytes]] = []
    client_streams: list[int] = []
    router_streams: list[int] = []
    quic = binding == "quic"

    def collect(side: Side, queue: list[tuple[int, bytes]]) -> None:
        if quic:
            items = side.conn.stream_data_to_send(now)
            _decode(side, [d for _, d, _ in items])
            queue.extend((ch, d) for ch, d, _ in items)
        else:
            out = side.conn.data_to_send(now)
            assert all(isinstance(d, bytes) for d in out)
            _decode(side, out)  # type: ignore[arg-type]
            queue.extend((0, d) for d in out)  # type: ignore[misc]
        if side.conn.closed and side.closed_at is None:
            side.closed_at = side.sent

    #: (role, stream) -> sizes of messages delivered and not yet consumed
    held: dict[tuple[Role, int], list[int]] = {}

    def deliver(side: Side, channel: int, data: bytes) -> None:
        c = side.conn
        if trace is not None:
            dec = FrameDecoder(BIG_LIMITS)
            dec.feed(data)
            try:
                shown = [repr(f) for f in dec]
            except Exception:
                shown = [data.hex()]
            trace.append(f"to {c.role.value} ch {channel}: {shown}")
        if quic:
            evs = []
            for piece in _cut(rnd, data):
                evs += c.receive_stream_data(channel, piece, now)
        elif binding == "ws":
            evs = c.receive_message(data, now)
        else:
            evs = []
            for piece in _cut(rnd, data):
                evs += c.receive_data(piece, now)
        side.check_events(evs)
        # its answers now, while its highest id is the one they were given under
        collect(side, to_client if side is router else to_router)
        for ev in evs:
            if isinstance(ev, StreamOpened) and c.role is Role.ROUTER:
                router_streams.append(ev.stream_id)
            if isinstance(ev, MessageReceived):
                if rnd.random() < 0.7:
                    c.acknowledge(ev.stream_id, ev.size)  # consumed: its credit may return
                else:  # held by the application: what it holds stays within the window
                    mine = held.setdefault((c.role, ev.stream_id), [])
                    mine.append(ev.size)
                    assert sum(mine) <= c.limits.initial_window, (ev, mine)
        side.check_state()

    def consume_held(side: Side) -> None:
        for (role, sid), sizes in list(held.items()):
            if role is side.conn.role:
                for size in sizes:
                    side.conn.acknowledge(sid, size)
                del held[(role, sid)]
        side.check_state()

    if rnd.random() < 0.8:  # the client's CAPABILITIES first (ATP-SESS-001): its limits
        client.conn.send_capabilities()
    for _ in range(rnd.randint(5, 60)):
        action = rnd.random()
        if action < 0.12:
            sid = _local(
                client.conn.open_stream,
                _TASK,
                qos=rnd.choice([0, 1, 3]),
                end_stream=rnd.random() < 0.3,
                now=now,
            )
            if sid is not None:
                client_streams.append(sid)
        elif action < 0.2 and client_streams:
            sid = rnd.choice(client_streams)
            _local(
                client.conn.send_message,
                sid,
                rnd.randbytes(rnd.choice([0, 10, 3000])),
                end_stream=rnd.random() < 0.5,
            )
        elif action < 0.24 and client_streams:
            _local(client.conn.reset_stream, rnd.choice(client_streams))
        elif action < 0.4 and router_streams:
            sid = rnd.choice(router_streams)
            r = rnd.random()
            if r < 0.15:
                _local(router.conn.send_error, sid, ErrorCode.EAGENTDOWN, "adapter gone")
            else:
                _local(
                    router.conn.send_message,
                    sid,
                    rnd.randbytes(rnd.choice([1, 100, 5000])),
                    more=r < 0.7,
                    end_stream=r >= 0.7,
                    ext={"telemetry": {"tokens": 3}} if r >= 0.9 else None,
                )
        elif action < 0.55:
            known = sorted({*client_streams, *router_streams})
            to_router.append((rnd.choice([0, *known]) if quic else 0, hostile(rnd, known)))
        elif action < 0.58:
            consume_held(rnd.choice((client, router)))
        elif action < 0.62:
            now += rnd.choice([0.5, 5.0, 40.0])
            for side in (client, router):
                side.check_events(side.conn.handle_timer(now))
                side.check_state()
        collect(client, to_router)
        collect(router, to_client)
        for queue, side in ((to_router, router), (to_client, client)):
            for _ in range(rnd.randint(0, len(queue))):
                channel, data = queue.pop(rnd.randrange(len(queue)) if quic else 0)
                deliver(side, channel, data)
        collect(client, to_router)
        collect(router, to_client)

    for side in (client, router):
        side.check_state()
        if side.conn.closed:
            closed = [e for e in side.events if isinstance(e, ConnectionClosed)]
            assert len(closed) == 1, closed
            assert side.conn_errors == (0 if closed[0].by_peer else 1)
            before = side.sent
            assert side.conn.receive_data(hostile(rnd, []), now) == []
            collect(side, [])
            assert side.sent == before  # a closed connection sends nothing more
