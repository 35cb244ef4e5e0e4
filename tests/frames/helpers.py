"""Helpers of the core's tests: the in-memory pair (:class:`atp_proto.testing.ConnectionPair`,
re-exported), event pickers, wire decoders, the seed frames and hypothesis settings."""

from __future__ import annotations

import os
from typing import TypeVar

from hypothesis import HealthCheck, settings

from atp_proto.frames import (
    Connection,
    Event,
    Frame,
    FrameDecoder,
    FrameType,
    Limits,
    StreamOpened,
    encode_frame,
)
from atp_proto.testing.pair import ConnectionPair
from conformance.vectors import seed_frames

E = TypeVar("E", bound=Event)

#: The three example frames of the seed (section 3), verbatim, from the one in-repo copy
#: (conformance/vectors/seed.json; tests/test_vectors.py checks it against the seed).
SEED_SYN, SEED_PARTIAL, SEED_FINAL = (seed_frames()[n] for n in ("syn", "partial", "final"))


def opened_pair(**kwargs: object) -> tuple[ConnectionPair, int]:
    """A handshaken pair with one stream open at the router."""
    p = ConnectionPair(**kwargs)  # type: ignore[arg-type]
    p.handshake()  # each side learns the other's limits
    sid = p.open()
    one(p.to_router(), StreamOpened)
    return p, sid


def frag(
    sid: int,
    seq: int,
    fseq: int,
    flags: int = 0,
    ext: dict[str, object] | None = None,
    body: bytes = b"x",
) -> bytes:
    """One encoded DATA frame (a fragment when ``flags`` has CONT)."""
    return encode_frame(Frame(FrameType.DATA, flags, sid, seq, fseq, ext=ext, payload=body))


def of(events: list[Event], cls: type[E]) -> list[E]:
    """The events of one class, in order."""
    return [e for e in events if isinstance(e, cls)]


def one(events: list[Event], cls: type[E]) -> E:
    """The only event of a class (fails otherwise)."""
    found = of(events, cls)
    assert len(found) == 1, f"expected one {cls.__name__}, got {events!r}"
    return found[0]


def wire(conn: Connection, now: float | None = None) -> list[Frame]:
    """Decode everything ``conn`` queued in binary (drains its output)."""
    frames: list[Frame] = []
    for msg in conn.data_to_send(now):
        assert isinstance(msg, bytes), "expected binary output"
        dec = FrameDecoder(Limits(max_frame_size=1 << 30, max_ext_size=1 << 30))
        dec.feed(msg)
        frames.extend(dec)
        assert dec.buffered == 0
    return frames


def text_wire(conn: Connection) -> list[str]:
    """Everything ``conn`` queued as text (drains its output)."""
    out = conn.data_to_send()
    assert all(isinstance(m, str) for m in out), out
    return [m for m in out if isinstance(m, str)]


#: Hypothesis settings for tests/frames, applied per test (not a global profile, so other
#: test directories keep theirs): the ``ci`` budget keeps the directory under a minute on
#: two cores. ``ATP_FRAMES_EXAMPLES`` scales it up for a deeper local run.
_SCALE = int(os.environ.get("ATP_FRAMES_EXAMPLES", "1"))
CI = settings(
    max_examples=200 * _SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIGHT = settings(CI, max_examples=100 * _SCALE)
