"""Byte movers below the session: one module per binding (spec §12 WebSocket; QUIC later).

They know the core (:mod:`atp_proto.frames`) only for close codes, and import nothing from
:mod:`atp_proto.session` or :mod:`atp_proto.router`.
"""

from .base import Oversized, Transport, TransportClosed, ws_close_code

__all__ = ["Oversized", "Transport", "TransportClosed", "ws_close_code"]
