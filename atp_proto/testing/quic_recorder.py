"""A QUIC peer's record of what arrived, for aioquic's asyncio API: every QUIC stream's
bytes and FIN, the resets and STOP_SENDINGs, and the connection close.

Scaffolding shared by the transport checker's QUIC pair
(:mod:`atp_proto.testing.quic_peer`) and the tests' independent QUIC peer: it imports
aioquic only, never :mod:`atp_proto.transports` or :mod:`atp_proto.frames`, so a peer built
on it stays independent of the QUIC transport it checks.
"""

from __future__ import annotations

import threading
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events as qe

__all__ = ["StreamRecorder"]


class StreamRecorder(QuicConnectionProtocol):
    """Records every QUIC stream's bytes, FINs, resets and stop-sendings, and the close.

    ``lock`` guards the records for a reader in another thread (the peer's event loop
    runs in its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.data: dict[int, bytearray] = {}
        self.fins: set[int] = set()
        self.resets: dict[int, int] = {}
        self.stops: dict[int, int] = {}
        self.close_code: int | None = None
        self.close_reason = ""

    def quic_event_received(self, event: qe.QuicEvent) -> None:
        with self.lock:
            if isinstance(event, qe.StreamDataReceived):
                self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.end_stream:
                    self.fins.add(event.stream_id)
            elif isinstance(event, qe.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, qe.StopSendingReceived):
                self.stops[event.stream_id] = event.error_code
            elif isinstance(event, qe.ConnectionTerminated):
                self.close_code = event.error_code
                self.close_reason = event.reason_phrase
        if not isinstance(event, qe.StreamDataReceived):
            # (the base class would make a StreamWriter per new stream, whose garbage
            # collection closes the stream with a FIN the peer did not ask for)
            super().quic_event_received(event)
