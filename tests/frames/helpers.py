"""An in-memory client/router pair (after h11's ``ConnectionPair``).

What one side queues with ``data_to_send()`` the other receives with ``receive_message()``
(binary) or ``receive_text()`` (text), at an explicit ``now``: no I/O, no clock, no mocks.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import cbor2
from hypothesis import HealthCheck, settings

from atp_proto.frames import (
    Connection,
    Event,
    Frame,
    FrameDecoder,
    FrameType,
    JsonMapping,
    Limits,
    Role,
    StreamOpened,
    encode_frame,
)
from conformance.vectors import seed_frames

E = TypeVar("E", bound=Event)

#: The three example frames of the seed (section 3), verbatim, from the one in-repo copy
#: (conformance/vectors/seed.json; tests/test_vectors.py checks it against the seed).
SEED_SYN, SEED_PARTIAL, SEED_FINAL = (seed_frames()[n] for n in ("syn", "partial", "final"))


class ConnectionPair:
    """A client ``Connection`` and a router ``Connection`` wired back to back."""

    def __init__(
        self,
        client_limits: Limits | None = None,
        router_limits: Limits | None = None,
        *,
        now: float = 0.0,
        client_heartbeat: float | None = None,
        router_heartbeat: float | None = None,
    ) -> None:
        self.now = now
        self.client = Connection(
            Role.CLIENT, limits=client_limits or Limits(), now=now, heartbeat=client_heartbeat
        )
        self.router = Connection(
            Role.ROUTER, limits=router_limits or Limits(), now=now, heartbeat=router_heartbeat
        )
        #: every frame each side received, decoded again (a wire log for assertions)
        self.router_saw: list[Frame] = []
        self.client_saw: list[Frame] = []
        self._json_to_router = JsonMapping()
        self._json_to_client = JsonMapping()

    # -- pumping --------------------------------------------------------------------

    def _deliver(
        self, src: Connection, dst: Connection, log: list[Frame], jm: JsonMapping
    ) -> list[Event]:
        events: list[Event] = []
        for msg in src.data_to_send(self.now):
            if isinstance(msg, str):
                frame = jm.decode(msg)
                if frame is not None:
                    log.append(frame)
                events += dst.receive_text(msg, self.now)
            else:
                dec = FrameDecoder(Limits(max_frame_size=1 << 30, max_ext_size=1 << 30))
                dec.feed(msg)
                log.extend(dec)
                events += dst.receive_message(msg, self.now)
        return events

    def to_router(self) -> list[Event]:
        """Deliver everything the client queued; the router's events."""
        return self._deliver(self.client, self.router, self.router_saw, self._json_to_router)

    def to_client(self) -> list[Event]:
        """Deliver everything the router queued; the client's events."""
        return self._deliver(self.router, self.client, self.client_saw, self._json_to_client)

    def pump(self, max_rounds: int = 10_000) -> tuple[list[Event], list[Event]]:
        """Deliver both ways until both sides are quiet: (router events, client events)."""
        r_events: list[Event] = []
        c_events: list[Event] = []
        for _ in range(max_rounds):
            if not (self.client.has_data_to_send() or self.router.has_data_to_send()):
                return r_events, c_events
            r_events += self.to_router()
            c_events += self.to_client()
        raise AssertionError("the pair did not go quiet")

    # -- shortcuts ------------------------------------------------------------------

    def open(self, prompt: str = "hi", **kwargs: Any) -> int:
        """Open a stream from the client (not yet delivered)."""
        kwargs.setdefault("now", None)  # as before ``now`` was required: no client-side ttl
        return self.client.open_stream(cbor2.dumps({"content": {"prompt": prompt}}), **kwargs)

    def handshake(self) -> None:
        """Client CAPABILITIES, router's answer."""
        self.client.send_capabilities()
        self.pump()


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
