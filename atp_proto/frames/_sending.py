"""The output side of a :class:`~atp_proto.frames.Connection`: opening streams, sending
messages (fragmented to the peer's frame size, queued per stream until credit covers
them), errors, resets, and the session-level frames (CAPABILITIES, HB, drain, close). The
send fast path (one whole binary PARTIAL within credit, the router's common case) packs
its header by hand beside :meth:`SendMixin.send_message_general`;
tests/frames/test_fast_paths.py holds the two to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from ._base import ConnectionBase, _bounded
from ._cbor import EncodedExt
from ._codec import HEADER, HEADER_SIZE, encode_ext
from ._errors import (
    LocalProtocolError,
    SequenceExhausted,
)
from ._events import (
    ConnectionClosed,
)
from ._fragments import fragment
from ._frame import Frame
from ._state import Role, StreamInput
from ._stream import Stream
from ._types import (
    CONT_BIT,
    FIN_BIT,
    MAX_STREAM_ID,
    SYN_BIT,
    U32_MAX,
    VERSION,
    BudgetWindow,
    Encoding,
    ErrorCode,
    Flags,
    FrameType,
    QoS,
)

__all__ = ["SendMixin"]

_HEADER_PACK: Final = HEADER.pack
_JSON: Final = Encoding.JSON
_BINARY: Final = Encoding.BINARY
#: the fast path's constants, looked up once (an enum member's lookup is per call)
_MORE: Final = int(Flags.MORE)
_DATA: Final = FrameType.DATA


class _Pending(Protocol):
    """What :meth:`SendMixin.write_check` reads of a per-stream transport."""

    pending_bytes: int


class SendMixin(ConnectionBase):
    """Output: streams opened, messages and control frames queued."""

    def write_check(
        self, stream_id: int, high_water: int, transport: _Pending | None = None
    ) -> Callable[[], bool]:
        """The per-chunk "may this stream queue a message now" test, as one call: no DATA
        of the stream waits for credit (:meth:`outbound_buffered` is 0) and what is queued
        here — plus, for a per-stream transport, what it holds unacknowledged
        (``transport.pending_bytes``, ATP-QUIC-010) — is at most ``high_water``.

        The session's ``can_write`` asks the same through four calls; a router asks once
        per relayed chunk, so the stream's test is a closure over the tables it reads
        (tests/frames/test_write_check.py holds it to that answer)."""
        streams = self._streams
        out = self._output  # never replaced: its items list is, on every take

        if transport is None:

            def check() -> bool:
                rec = streams.get(stream_id)
                return (rec is None or not rec.send.outbox_bytes) and out.size <= high_water

            return check

        def check_io() -> bool:
            rec = streams.get(stream_id)
            return (rec is None or not rec.send.outbox_bytes) and (
                out.size + transport.pending_bytes <= high_water
            )

        return check_io

    # ------------------------------------------------------------------ sending

    def open_stream(
        self,
        payload: bytes = b"",
        *,
        stream_id: int | None = None,
        msg_seq: int = 1,
        qos: QoS = QoS.UNSPECIFIED,
        ttl: int = 0,
        window: BudgetWindow | None = None,
        meta: Mapping[str, Any] | None = None,
        end_stream: bool = False,
        encoding: Encoding = Encoding.BINARY,
        now: float | None,
    ) -> int:
        """Open a stream with a SYN (client only). Returns its stream id.

        ``now`` is required: the stream's ttl runs from it on our side too (``None``: the
        ttl is the router's alone, no local deadline). ``encoding`` is the stream's:
        JSON for a browser-like text client (WebSocket only, ATP-QUIC-003).

        Raises:
            LocalProtocolError: not a client, the router is draining, the stream id does
                not increase, or the peer's ``max_streams`` would be exceeded.
        """
        if self.role is not Role.CLIENT:
            raise LocalProtocolError(ErrorCode.EPROTO, "only clients open streams")
        if self._closed is not None:
            raise LocalProtocolError(ErrorCode.EPROTO, "the connection is closed")
        if self._peer_draining:
            raise LocalProtocolError(ErrorCode.EDRAINING, "the router is draining")
        sid = self._highest_id + 1 if stream_id is None else stream_id
        if not self._highest_id < sid <= MAX_STREAM_ID:
            raise LocalProtocolError(
                ErrorCode.EPROTO, f"stream id {sid} must exceed {self._highest_id}"
            )
        if len(self._streams) >= self._peer.max_streams:
            raise LocalProtocolError(
                ErrorCode.EWINDOW, f"the peer allows {self._peer.max_streams} concurrent streams"
            )
        if len(payload) > self._peer.message_size:  # ATP-LIMIT-004, before any stream state
            raise LocalProtocolError(
                ErrorCode.ETOOBIG,
                f"a task of {len(payload)} bytes exceeds the peer's max_message_size "
                f"({self._peer.message_size})",
            )
        self._highest_id = sid
        if encoding is _JSON:
            self.json.note_stream_id(sid)
        rec = self._new_stream(sid, encoding)
        rec.apply(StreamInput.SEND_SYN)
        rec.send_seq = msg_seq
        rec.recv_seq = msg_seq + 1
        rec.qos = qos
        if window is not None:
            rec.window = window
        if ttl and now is not None:
            rec.deadline = now + ttl
            self.timer_stale = True
        ext: dict[str, Any] = {}
        if window is not None:
            ext["window"] = window.to_dict()
        if meta is not None:
            ext["meta"] = dict(meta)
        self._send_data(rec, payload, SYN_BIT, ext, qos=qos, ttl=ttl, fin=end_stream)
        return sid

    def send_message(
        self,
        stream_id: int,
        payload: bytes | memoryview,
        *,
        more: bool = False,
        end_stream: bool = False,
        ext: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one message (fragmented to the peer's max_frame_size as needed).

        The frames leave as credit allows; watch :meth:`outbound_buffered` to stop
        producing while the peer is not reading.

        Raises:
            StreamClosedError: the stream cannot send (closed, half-closed, unknown).
        """
        rec = self._streams.get(stream_id)
        # Fast path (the router's PARTIALs): a binary stream that can send, one fragment,
        # no ext, credit available, nothing queued before it. Same bytes as the general
        # path (tests/frames/test_fast_paths.py holds them to it), without building and
        # validating a Frame (ATP-FLOW, ATP-SEQ still hold).
        if (
            rec is not None
            and rec.sendable
            and not end_stream
            and not ext
            and rec.encoding is _BINARY
            and not rec.send.outbox
            and self._closed is None
        ):
            n = len(payload)
            cost = HEADER_SIZE + n
            window = rec.send
            if (
                cost <= window.credit
                and n <= self._frag_size
                and n <= self._peer.message_size
                and rec.send_seq < U32_MAX
            ):
                seq = rec.send_seq
                rec.send_seq = seq + 1
                window.credit -= cost
                flags = _MORE if more else 0
                header = _HEADER_PACK(VERSION, 0, flags, 0, stream_id, seq, 0, 0, 0, n)
                out = self._output  # Output.push, inlined (once per relayed chunk)
                out.items.append((stream_id, header + payload, False))
                out.size += cost
                sent = self.frames_sent
                sent[_DATA] = sent.get(_DATA, 0) + 1
                return
        self.send_message_general(stream_id, payload, more=more, end_stream=end_stream, ext=ext)

    def send_message_general(
        self,
        stream_id: int,
        payload: bytes | memoryview,
        *,
        more: bool = False,
        end_stream: bool = False,
        ext: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`send_message` without its fast path (every rule, every message)."""
        rec = self._get_sendable(stream_id)
        own: dict[str, Any]
        if not ext:
            own = {}
        elif ext.__class__ is EncodedExt:  # read-only, and encoded once already
            own = ext
        else:
            own = dict(ext)
        self._send_data(rec, payload, Flags.MORE if more else 0, own, fin=end_stream)

    def _send_data(
        self,
        rec: Stream,
        payload: bytes | memoryview,
        flags: int,
        ext: dict[str, Any],
        *,
        qos: int = 0,
        ttl: int = 0,
        fin: bool = False,
    ) -> None:
        ext_len = len(encode_ext(ext)) if ext else 0
        window = rec.send.window
        if HEADER_SIZE + ext_len > window // 2:
            # ATP-FLOW-014: a first fragment that cannot fit half the peer's window might
            # wait forever for credit a conformant receiver never has to return.
            raise LocalProtocolError(
                ErrorCode.ETOOBIG,
                f"an ext of {ext_len} bytes does not fit half the peer's initial_window "
                f"({window}): at most {window // 2 - HEADER_SIZE} bytes",
                stream_id=rec.stream_id,
            )
        if len(payload) > self._peer.message_size:
            # ATP-LIMIT-004: never a message larger than the peer's max_message_size (the
            # router refuses the stream with ETOOBIG, as for ATP-FLOW-014). Found by the
            # independent client (tests/indie).
            raise LocalProtocolError(
                ErrorCode.ETOOBIG,
                f"a message of {len(payload)} bytes exceeds the peer's max_message_size "
                f"({self._peer.message_size})",
                stream_id=rec.stream_id,
            )
        if rec.encoding is _JSON and self._peer_sent_caps:
            self._check_text_progress(rec, flags, ext, window)
        if fin:
            rec.apply(StreamInput.SEND_FIN)
        elif not flags & SYN_BIT:
            rec.apply(StreamInput.SEND_DATA)
        seq = rec.send_seq
        if seq > U32_MAX or (seq == U32_MAX and not fin):
            # ATP-SEQ-005: end the stream rather than wrap; the last number carries FIN
            raise SequenceExhausted(
                ErrorCode.EPROTO,
                "the SYN's msg_seq leaves no msg_seq for this stream's messages before its "
                "FINAL (2^32-1 is the last; ATP-SEQ-005)",
                stream_id=rec.stream_id,
            )
        rec.send_seq = seq + 1
        sid = rec.stream_id
        if rec.encoding is _JSON:  # ATP-FLOW-008: text frames cost their UTF-8 length
            items = self._text_fragments(sid, payload, flags, ext, ext_len, seq, qos, ttl, fin)
        else:
            frames = fragment(
                sid, seq, payload, flags, ext, ext_len, self._frag_size, qos=qos, ttl=ttl, fin=fin
            )
            items = [(f, HEADER_SIZE + len(f.payload)) for f in frames]
            if ext_len:
                items[0] = (frames[0], items[0][1] + ext_len)
        for frame, cost in items:
            rec.send.push(frame, cost)
        self._flush_outbox(rec)

    def _check_text_progress(
        self, rec: Stream, flags: int, ext: dict[str, Any], window: int
    ) -> None:
        """ATP-FLOW-014 for a text stream whose peer limits credit: a frame costs the UTF-8
        length of its JSON, so the smallest fragments this message can be cut to — the
        first (with the whole ext, ``stream_num`` included) and a later one, each with one
        payload byte — must each fit half the peer's window, or the stream could wait
        forever for credit a conformant receiver never has to return.

        Raises:
            LocalProtocolError: ETOOBIG, before anything of the message is queued.
        """
        sid, seq = rec.stream_id, rec.send_seq
        if self.json.announcement_pending(sid):
            ext = {**ext, "stream_num": sid}  # ATP-JSON-016, as _text_fragments adds it
        first_flags = (flags | CONT_BIT) & ~FIN_BIT
        first = Frame(FrameType.DATA, first_flags, sid, seq, 0, 0, 0, ext or None, b"x")
        later = Frame(FrameType.DATA, CONT_BIT, sid, seq, 0xFFFF, 0, 0, None, b"x")
        worst = max(self._text_frame_cost(first), self._text_frame_cost(later))
        if worst > window // 2:
            raise LocalProtocolError(
                ErrorCode.ETOOBIG,
                f"the smallest text fragment of this message costs {worst} bytes, more than "
                f"half the peer's initial_window ({window})",
                stream_id=sid,
            )

    def _text_fragments(
        self,
        sid: int,
        payload: bytes | memoryview,
        flags: int,
        ext: dict[str, Any],
        ext_len: int,
        seq: int,
        qos: int,
        ttl: int,
        fin: bool,
    ) -> list[tuple[Frame, int]]:
        """The frames of one message on a text stream, each with its cost: the UTF-8
        length of its text (ATP-FLOW-008). JSON can be longer than CBOR (base64, escapes):
        when the peer limits credit, fragments shrink until each text frame fits as a
        binary one would (ATP-FLOW-001: a frame larger than the window never leaves)."""
        frag = self._frag_size
        limit = frag + HEADER_SIZE
        if self.json.take_announcement(sid):  # the first DATA under an alias
            ext = {**ext, "stream_num": sid}  # ATP-JSON-016
        while True:
            frames = fragment(
                sid, seq, payload, flags, ext, ext_len, frag, qos=qos, ttl=ttl, fin=fin
            )
            built = [(f, self._text_frame_cost(f)) for f in frames]
            if not self._peer_sent_caps:
                return built  # a browser's credit is unlimited (ATP-FLOW-007)
            worst = max(c for _, c in built)
            if worst <= limit or frag <= 64:
                return built
            frag = max(frag * limit // worst - 64, 64)

    def update_window(self, stream_id: int, window: BudgetWindow) -> None:
        """Change the stream's budget window mid-flight (client), via WINDOW_UPDATE."""
        rec = self._get_open(stream_id)
        rec.window = rec.window.merged(window)
        self._queue(Frame.window_update(stream_id, window=window), rec.encoding)

    def send_budget_update(self, stream_id: int, usage: Mapping[str, Any]) -> None:
        """Report usage so far to the client (router), via BUDGET_UPDATE."""
        rec = self._get_open(stream_id)
        self._queue(
            Frame(FrameType.BUDGET_UPDATE, 0, stream_id, ext={"usage": dict(usage)}), rec.encoding
        )

    def send_error(
        self,
        stream_id: int,
        code: ErrorCode | str,
        message: str,
        retry_after_ms: int | None = None,
    ) -> None:
        """End a stream with an ERROR frame (no-op when it is already closed). ``message``
        is cut as the core's own (:data:`~._base.MAX_ERROR_MESSAGE` code points)."""
        rec = self._streams.get(stream_id)
        if self._closed is not None or rec is None or rec.closed:
            return
        message = _bounded(message)
        self._queue(Frame.error(stream_id, code, message, retry_after_ms), rec.encoding)
        self._close_stream(rec, StreamInput.SEND_RST)

    def reset_stream(self, stream_id: int) -> None:
        """Abandon a stream (RST, no error detail): a client's cancel."""
        rec = self._streams.get(stream_id)
        if self._closed is not None or rec is None or rec.closed:
            return
        self._queue(Frame(FrameType.DATA, Flags.RST, stream_id, rec.send_seq), rec.encoding)
        self._close_stream(rec, StreamInput.SEND_RST)

    def send_capabilities(
        self, *, encoding: Encoding = Encoding.BINARY, auth: str | None = None
    ) -> None:
        """Send our CAPABILITIES (clients: as the first frame; the router answers).
        ``auth``: the client's ``caps.auth`` (``"Bearer <token>"``) where the binding has
        no handshake to carry it (QUIC, ATP-QUIC-008); never sent by a router."""
        frame = self._caps_frame()
        if auth is not None:
            frame = Frame(
                FrameType.CAPABILITIES, 0, 0, ext={"caps": {**frame.ext["caps"], "auth": auth}}
            )
        self._queue(frame, encoding)

    def send_heartbeat(self, now: float, payload: bytes = b"") -> None:
        if self._closed is None:
            self._hb_sent_at = now
            self._queue(Frame(FrameType.DATA, Flags.HB, 0, payload=payload), self._out_encoding)

    def start_drain(
        self, message: str = "the router is shutting down", retry_after_ms: int = 1000
    ) -> None:
        """Stop accepting streams (router): new SYNs get EDRAINING; open ones go on."""
        if self._draining or self._closed is not None:
            return
        self._draining = True
        self._drain_retry_ms = retry_after_ms
        self._queue(
            Frame.error(0, ErrorCode.EDRAINING, _bounded(message), retry_after_ms),
            self._out_encoding,
        )

    def close(self, code: ErrorCode | str = ErrorCode.EDRAINING, message: str = "closing") -> None:
        """Close the connection with a connection-level ERROR frame."""
        if self._closed is not None:
            return
        message = _bounded(message)
        self._queue(Frame.error(0, code, message), self._out_encoding)
        self._closed = ConnectionClosed(str(code), message, by_peer=False)
        self._streams.clear()
