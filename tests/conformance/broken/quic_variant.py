"""Deliberately broken QUIC bindings, each wrong in one way of spec §13.2.

Router variants (``quic-…``) are applied before ``atp serve`` starts by
``site/sitecustomize.py``, so the suite meets a real router process over a real UDP socket.
Client variants (``quic-client-…``): ``python quic_variant.py NAME URL [testee args]`` runs
the Python client testee (conformance/testees/python_client.py) with the fault.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from atp_proto.transports import _quic_conn, quic_server
from atp_proto.transports._quic_frames import FirstFrame, reset_code
from atp_proto.transports.base import ChannelData, ChannelEnd


def reset_stream_for_errors() -> None:
    """Its own stream resets as RESET_STREAM (discarding the ERROR frame), ATP-QUIC-006."""
    original = _quic_conn.QuicTransport.try_send_streams

    def patched(self: Any, items: list[tuple[int, bytes, bool]]) -> bool:
        keep = []
        for atp_sid, data, end in items:
            code = reset_code(data) if end and atp_sid else None
            q = self._a2q.get(atp_sid)
            if code is not None and q is not None and q not in self._fin_sent:
                self._fin_sent.add(q)
                self.quic.reset_stream(q, code)
                self.endpoint.mark(self)
            else:
                keep.append((atp_sid, data, end))
        return original(self, keep)

    _quic_conn.QuicTransport.try_send_streams = patched  # type: ignore[method-assign]


def close_code_zero() -> None:
    """Connection errors close with application code 0 instead of 0x100 + i (ATP-QUIC-004)."""

    async def close_with_error(self: Any, code: Any, reason: str) -> None:
        await self._close(0, reason)

    _quic_conn.QuicTransport.close_with_error = close_with_error  # type: ignore[method-assign]


def fin_late() -> None:
    """The QUIC FIN never goes with the FINAL: the router's side stays open (ATP-QUIC-013)."""
    original = _quic_conn.QuicTransport.try_send_streams

    def patched(self: Any, items: list[tuple[int, bytes, bool]]) -> bool:
        quic = self.quic
        send = quic.send_stream_data

        def no_fin(stream_id: int, data: bytes, end_stream: bool = False) -> None:
            send(stream_id, data, end_stream=False)

        quic.send_stream_data = no_fin
        try:
            return original(self, items)
        finally:
            quic.send_stream_data = send

    _quic_conn.QuicTransport.try_send_streams = patched  # type: ignore[method-assign]


def any_alpn() -> None:
    """The handshake completes for any ALPN the client offers (ATP-QUIC-001)."""
    original = quic_server.server_configuration

    def patched(cfg: Any, loopback: bool) -> Any:
        conf = original(cfg, loopback)
        conf.alpn_protocols = ["atp/1", "h3", "h2", "http/1.1"]
        return conf

    quic_server.server_configuration = patched  # type: ignore[assignment]


def any_order() -> None:
    """New QUIC streams' SYNs are taken as they complete, not in QUIC stream id order, so a
    later stream's SYN that arrives first makes the earlier one's id look reused
    (ATP-QUIC-021)."""

    def new_stream_data(self: Any, sid: int, data: bytes, end: bool) -> None:
        head = self._head.get(sid)
        if head is None:
            head = self._head[sid] = FirstFrame()
        head.add(data)
        if not head.complete():
            return
        del self._head[sid]
        first = head.take()
        channel = int.from_bytes(first[4:8], "big")
        if channel == 0 or channel in self._a2q or channel <= self._last_first:
            self._fault(f"QUIC stream {sid}: ATP stream {channel} (not above the last)")
            return
        self._last_first = channel
        self._q2a[sid], self._a2q[channel] = channel, sid
        self._deliver(sid, channel, first, end)

    _quic_conn.QuicTransport._new_stream_data = new_stream_data  # type: ignore[method-assign]


def client_fin_early() -> None:
    """The client ends its side of each ATP stream's QUIC stream with its SYN, before the
    router's FINAL, so its WINDOW_UPDATEs could not follow (ATP-QUIC-012)."""
    original = _quic_conn.QuicTransport.try_send_streams

    def patched(self: Any, items: list[tuple[int, bytes, bool]]) -> bool:
        quic = self.quic
        send = quic.send_stream_data

        def fin_on_syn(stream_id: int, data: bytes, end_stream: bool = False) -> None:
            syn = stream_id != 0 and len(data) > 2 and data[1] == 0 and data[2] & 0x01
            send(stream_id, data, end_stream=end_stream or bool(syn))

        quic.send_stream_data = fin_on_syn
        try:
            return original(self, items)
        finally:
            quic.send_stream_data = send

    _quic_conn.QuicTransport.try_send_streams = patched  # type: ignore[method-assign]


def client_close_eproto() -> None:
    """A session that ended normally closes with 0x100 (EPROTO), not 0 (ATP-QUIC-015)."""

    async def aclose(self: Any) -> None:
        await self._close(0x100, "")

    _quic_conn.QuicTransport.aclose = aclose  # type: ignore[method-assign]


def client_ignore_reset() -> None:
    """The client does not look for stateless resets: every datagram goes to aioquic, which
    drops one for an unknown CID, so the session waits for its idle timeout (ATP-QUIC-022)."""

    def datagram_received(self: Any, data: bytes, addr: Any, now: float) -> None:
        self.quic.receive_datagram(data, addr, now)

    _quic_conn.QuicTransport.datagram_received = datagram_received  # type: ignore[method-assign]


def client_close_on_reset() -> None:
    """The client sees the reset and ends the session, but closes it as if the router were
    still there: a CONNECTION_CLOSE goes out where it must send nothing (ATP-QUIC-022)."""

    def reset(self: Any, now: float) -> None:
        if self.stateless_reset:
            return
        self.stateless_reset = True
        self.peer_close_reason = "stateless reset"
        self.quic.close(error_code=0x0)  # closing, not draining
        self.endpoint.mark(self)
        self.terminated.set()
        self._inbox_ready.set()
        self._timer_wake.set()

    _quic_conn.QuicTransport._reset_statelessly = reset  # type: ignore[method-assign]


def client_any_reset() -> None:
    """The client takes any short-header datagram of a reset's size that is not for one of
    its connection IDs for a stateless reset, token or not: anyone who can send it a
    datagram with the router's address can end its sessions (ATP-QUIC-022, §10.3.1)."""

    def datagram_received(self: Any, data: bytes, addr: Any, now: float) -> None:
        ours = {c.cid for c in self.quic._host_cids}
        if len(data) >= _quic_conn.RESET_MIN and not data[0] & 0x80 and data[1:9] not in ours:
            self._reset_statelessly(now)
            return
        self.quic.receive_datagram(data, addr, now)

    _quic_conn.QuicTransport.datagram_received = datagram_received  # type: ignore[method-assign]


def reused_id_stream_error() -> None:
    """A new QUIC stream naming an ATP id not above an earlier QUIC stream's is handed to
    the core like any other (whose stream rules then answer it, or discard it), not a
    connection error (ATP-QUIC-023)."""
    original = _quic_conn.QuicTransport._advance

    def advance(self: Any) -> None:
        self._last_first = -1  # every id is above it: the check never fires
        original(self)

    _quic_conn.QuicTransport._advance = advance  # type: ignore[method-assign]


def early_fin_ignored() -> None:
    """The client's QUIC FIN before the ATP stream ended is not told to the core: the stream
    runs on as if nothing happened (ATP-QUIC-024)."""
    original = _quic_conn.QuicTransport._deliver

    def deliver(self: Any, sid: int, channel: int, data: bytes, end: bool) -> None:
        original(self, sid, channel, data, end)
        while self._inbox and isinstance(self._inbox[-1], ChannelEnd):
            self._inbox.pop()

    _quic_conn.QuicTransport._deliver = deliver  # type: ignore[method-assign]


def control_end_ignored() -> None:
    """The client's QUIC FIN on the control stream is taken as nothing: the session goes
    on with a control stream that can carry nothing more (ATP-QUIC-025)."""
    original = _quic_conn.QuicTransport._deliver

    def deliver(self: Any, sid: int, channel: int, data: bytes, end: bool) -> None:
        original(self, sid, channel, data, end and sid != 0)

    _quic_conn.QuicTransport._deliver = deliver  # type: ignore[method-assign]


def client_control_reset_ignored() -> None:
    """The client takes the router's RESET_STREAM or STOP_SENDING on the control stream for
    nothing: the session goes on with a control stream that can carry nothing more
    (ATP-QUIC-025). (Its FIN: ``control_end_ignored``, which either end shares.)"""
    original_reset = _quic_conn.QuicTransport._peer_reset
    original_fault = _quic_conn.QuicTransport._fault

    def peer_reset(self: Any, sid: int) -> None:
        if sid:
            original_reset(self, sid)

    def fault(self: Any, message: str, *args: Any) -> None:
        if "STOP_SENDING on the control stream" not in message:
            original_fault(self, message, *args)

    _quic_conn.QuicTransport._peer_reset = peer_reset  # type: ignore[method-assign]
    _quic_conn.QuicTransport._fault = fault  # type: ignore[method-assign]


VARIANTS: dict[str, Callable[[], None]] = {
    "quic-client-control-end-ignored": control_end_ignored,
    "quic-client-control-reset-ignored": client_control_reset_ignored,
    "quic-client-any-reset": client_any_reset,
    "quic-client-close-on-reset": client_close_on_reset,
    "quic-client-ignore-reset": client_ignore_reset,
    "quic-client-fin-early": client_fin_early,
    "quic-client-close-eproto": client_close_eproto,
    "quic-reset-stream": reset_stream_for_errors,
    "quic-close-code-zero": close_code_zero,
    "quic-fin-late": fin_late,
    "quic-any-alpn": any_alpn,
    "quic-any-order": any_order,
    "quic-reused-id-stream-error": reused_id_stream_error,
    "quic-early-fin-ignored": early_fin_ignored,
    "quic-control-end-ignored": control_end_ignored,
}


def _frames_by_header(data: bytes) -> list[tuple[int, bytes]] | None:
    """``data`` as (header stream id, frame) pairs when it is whole frames only, else None."""
    out, at = [], 0
    while at < len(data):
        if len(data) - at < 24:
            return None
        size = (
            24 + int.from_bytes(data[at + 16 : at + 20]) + int.from_bytes(data[at + 20 : at + 24])
        )
        if len(data) - at < size:
            return None
        out.append((int.from_bytes(data[at + 4 : at + 8]), data[at : at + size]))
        at += size
    return out


def _by_header(rechannel: Callable[[Any, int, int], bool]) -> None:
    """Frames on an ATP stream's QUIC stream handed to the core as frames of the stream
    their header names (not the QUIC stream's) when ``rechannel(self, channel, named)``."""
    original = _quic_conn.QuicTransport._deliver

    def deliver(self: Any, sid: int, channel: int, data: bytes, end: bool) -> None:
        frames = _frames_by_header(data) if channel and data else None
        if not frames or all(named == channel for named, _ in frames):
            original(self, sid, channel, data, end)
            return
        for named, frame in frames:
            self._inbox.append(
                ChannelData(named if rechannel(self, channel, named) else channel, frame)
            )
        original(self, sid, channel, b"", end)

    _quic_conn.QuicTransport._deliver = deliver  # type: ignore[method-assign]


def frame_by_header() -> None:
    """A frame for ATP stream N on another stream's QUIC stream is taken as stream N's, as
    a WebSocket router dispatches by the header (ATP-QUIC-005: a connection error EPROTO)."""
    _by_header(lambda self, channel, named: named != 0)


def ended_stream_frame_discarded() -> None:
    """ATP-QUIC-005's check comes after the stream state: a frame naming a stream the
    router has ended (its FIN sent, or its QUIC stream done) is taken as that stream's, so
    discarded (ATP-FLAG-004), not a connection error (ATP-QUIC-016)."""

    def ended(self: Any, channel: int, named: int) -> bool:
        q = self._a2q.get(named)
        return named != 0 and (q is None or q in self._fin_sent)  # our side is done

    _by_header(ended)


VARIANTS["quic-frame-by-header"] = frame_by_header
VARIANTS["quic-ended-stream-frame-discarded"] = ended_stream_frame_discarded


def unidirectional_ignored() -> None:
    """Data on a client-opened unidirectional QUIC stream is dropped, not a connection
    error EPROTO (ATP-QUIC-011)."""
    original = _quic_conn.QuicTransport._stream_data

    def stream_data(self: Any, sid: int, data: bytes, end: bool) -> None:
        if sid & 3 == 2:  # client-initiated, unidirectional (RFC 9000 §2.1)
            return
        original(self, sid, data, end)

    _quic_conn.QuicTransport._stream_data = stream_data  # type: ignore[method-assign]


def later_auth_taken() -> None:
    """A later CAPABILITIES' caps.auth is verified again, and a bad one ends the session
    (ATP-QUIC-017: only the first authenticates; later ones are ignored)."""
    from atp_proto.frames import ATPError, CapabilitiesReceived
    from atp_proto.session import session

    init, dispatch = session.Session.__init__, session.Session._dispatch

    def patched_init(self: Any, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        self._first_auth = kw.get("authenticate")

    def patched_dispatch(self: Any, events: list[Any]) -> None:
        again = getattr(self, "_first_auth", None)
        if again is not None and self._authenticate is None:
            for ev in events:
                if isinstance(ev, CapabilitiesReceived) and "auth" in ev.caps:
                    try:
                        self.principal = again(ev)
                    except ATPError as exc:
                        self.close(exc.code, exc.message)
                        return
        dispatch(self, events)

    session.Session.__init__ = patched_init  # type: ignore[method-assign]
    session.Session._dispatch = patched_dispatch  # type: ignore[method-assign]


VARIANTS["quic-unidirectional-ignored"] = unidirectional_ignored
VARIANTS["quic-later-auth-taken"] = later_auth_taken


if __name__ == "__main__":
    VARIANTS[sys.argv.pop(1)]()
    from conformance.testees.python_client import main

    sys.exit(main())
