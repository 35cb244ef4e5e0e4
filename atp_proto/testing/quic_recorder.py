"""A QUIC peer's record of what arrived, for aioquic's asyncio API: every QUIC stream's
bytes and FIN, the resets and STOP_SENDINGs, and the connection close.

Scaffolding shared by the transport checker's QUIC pair
(:mod:`atp_proto.testing.quic_peer`) and the tests' independent QUIC peer: it imports
aioquic only, never :mod:`atp_proto.transports` or :mod:`atp_proto.frames`, so a peer built
on it stays independent of the QUIC transport it checks.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events as qe

__all__ = ["StallableRecorder", "StreamRecorder"]


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


class _Muting(asyncio.DatagramTransport):
    """The UDP transport of a :class:`StallableRecorder`: drops what it sends once muted
    (aioquic still runs its timers, so the connection ends by itself at its close or idle
    timer)."""

    def __init__(self, inner: asyncio.DatagramTransport, owner: StallableRecorder) -> None:
        super().__init__()
        self.inner, self.owner = inner, owner

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self.owner.muted:
            self.inner.sendto(data, addr)

    def close(self) -> None:
        self.inner.close()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def abort(self) -> None:
        self.inner.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)


class StallableRecorder(StreamRecorder):
    """A :class:`StreamRecorder` that can stall (drop what arrives: no acknowledgements,
    the sender's unacknowledged bytes stay up) or go mute (send nothing more, not even a
    close: the far end learns only by its idle timeout)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stalled = False
        self.muted = False

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if not self.stalled:
            super().datagram_received(data, addr)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_Muting(cast(asyncio.DatagramTransport, transport), self))
