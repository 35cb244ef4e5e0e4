"""An in-memory client/router pair of sans-IO connections (after h11's ``ConnectionPair``
and aioquic's ``client_and_server()``).

What one side queues with ``data_to_send()`` the other receives with ``receive_message()``
(binary) or ``receive_text()`` (text), at an explicit ``now``: no I/O, no clock, no mocks.
Each side's received frames are decoded again into a wire log (``router_saw`` /
``client_saw``) for assertions.
"""

from __future__ import annotations

from typing import Any

import cbor2

from atp_proto.frames import (
    Connection,
    Event,
    Frame,
    FrameDecoder,
    JsonMapping,
    Limits,
    Role,
)

__all__ = ["ConnectionPair"]


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
