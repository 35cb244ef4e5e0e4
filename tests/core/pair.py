"""An in-memory client/router pair (like h11's ConnectionPair): what one side sends, the
other receives, with the time passed explicitly."""

from __future__ import annotations

from typing import Any

import cbor2

from atp_proto.frames import Connection, Event, Limits, Role


class Pair:
    def __init__(self, client_limits: Limits | None = None, router_limits: Limits | None = None):
        self.now = 0.0
        self.client = Connection(Role.CLIENT, limits=client_limits or Limits(), now=0.0)
        self.router = Connection(Role.ROUTER, limits=router_limits or Limits(), now=0.0)

    def to_router(self) -> list[Event]:
        events: list[Event] = []
        for msg in self.client.data_to_send(self.now):
            if isinstance(msg, str):
                events += self.router.receive_text(msg, self.now)
            else:
                events += self.router.receive_message(msg, self.now)
        return events

    def to_client(self) -> list[Event]:
        events: list[Event] = []
        for msg in self.router.data_to_send(self.now):
            if isinstance(msg, str):
                events += self.client.receive_text(msg, self.now)
            else:
                events += self.client.receive_message(msg, self.now)
        return events

    def open(self, prompt: str = "hi", **kwargs: Any) -> int:
        return self.client.open_stream(cbor2.dumps({"content": {"prompt": prompt}}), **kwargs)


def of(events: list[Event], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]
