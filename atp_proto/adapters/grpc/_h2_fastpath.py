"""Every line of the gRPC client that touches h2's private attributes, in one file.

DATA frames of open calls (no padding, no END_STREAM) take a fast path: the frame header
is parsed here and h2's flow-control and stream state are updated exactly as
``H2Connection.receive_data`` would, without building h2's frame and event objects (about
half the client's cost per streamed message). Every other frame, and any DATA frame the
fast path is not certain about, goes to h2 in order, so h2 still validates everything it
sees.

The private attributes written (``H2Connection._inbound_flow_control_window_manager``,
``H2Stream._inbound_window_manager``, ``_expected_content_length``,
``_actual_content_length``) are why ``pyproject.toml`` pins h2 exactly;
``tests/test_pinned_internals.py`` fails, naming this module, when h2 changes them, and
``tests/adapters/test_grpc_fastpath.py`` checks the fast path against h2's own path.

:class:`Connection` is h2's connection with a cheaper count of open outbound streams:
h2 counts them by scanning every stream it holds (and drops the closed ones as it goes)
twice per new call, so a call's cost grew with the calls in flight (and a router behind
on its load paid most exactly when it could least afford it). It reads only h2's public
``streams`` and calls h2's own count; ``tests/test_pinned_internals.py`` pins that h2
still counts through the property. Its ``_receive_frame`` is h2's, less the
``repr(frame)`` h2 builds for a trace log call that its default logger drops (2-3 µs a
frame, ~1 % of the router's CPU per stream); with any other logger h2's own runs. The
copy is pinned by the source digest of h2's method (:data:`H2_RECEIVE_FRAME_SHA256`).

Its HPACK encoder is :class:`StatelessEncoder`: a call's request headers are encoded
without the dynamic table (static-table entries, literals without indexing), which takes
a few microseconds where hpack's encoder took 20-50 (its table search and insertion, and
every call's new ``grpc-timeout`` value churning the table), and leaves the table, and the
server's copy of it, untouched.

A call's request leaves by :meth:`Connection.send_request`: its HEADERS frame (one block)
and its one DATA frame with END_STREAM are written here and the new stream's state set as
h2's ``send_headers`` + ``send_data`` set it (same bytes; 7 µs instead of 29 µs a call,
microbenchmark), checked against h2 itself by tests/adapters/test_grpc_send_request.py and
pinned by the source digest of the h2 methods it stands in for
(:data:`H2_SEND_REQUEST_SHA256`). A request that is not that simple case (over one frame
or the windows, a table size update due, the stream limit) goes through h2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.stream
import h2.utilities
from h2.connection import AllowedStreamIDs, _decode_headers
from hpack import Encoder
from hpack.table import HeaderTable
from hyperframe.frame import Frame, RstStreamFrame

if TYPE_CHECKING:
    from ._h2 import H2Channel

__all__ = [
    "H2_RECEIVE_FRAME_SHA256",
    "H2_RECEIVE_HEADERS_SHA256",
    "H2_SEND_REQUEST_SHA256",
    "Connection",
    "StatelessEncoder",
    "fast_window",
    "feed",
]

#: sha256 of ``inspect.getsource(h2.connection.H2Connection._receive_frame)`` (h2 4.4.1),
#: the method :meth:`Connection._receive_frame` copies
H2_RECEIVE_FRAME_SHA256 = "39b2e16b4fd74ed014ca144a0c6e388aef3dc51f116d6f0a874b70d92bd92873"

#: sha256 of ``inspect.getsource`` of the h2 4.4.1 methods :meth:`Connection.send_request`
#: stands in for (``H2Connection.send_headers``, ``H2Connection.send_data``,
#: ``H2Connection._begin_new_stream``, ``H2Stream.send_headers``, ``H2Stream.send_data``,
#: ``H2Stream._build_headers_frames``, ``H2StreamStateMachine.request_sent``), joined
H2_SEND_REQUEST_SHA256 = "0e2b2fe638aa5d11c69d3149122b518780990aed261bb4dbe0e91808f84d2337"

#: sha256 of ``inspect.getsource`` of the h2 4.4.1 functions :meth:`Connection.receive_headers`
#: stands in for or calls (``H2Connection.receive_data``, ``H2Connection._receive_headers_frame``,
#: ``_decode_headers``, ``H2Stream.receive_headers``, ``H2Stream._initialize_content_length``,
#: ``H2Stream._process_received_headers``, ``H2StreamStateMachine.response_received``,
#: ``H2StreamStateMachine.stream_ended``, ``utilities.is_informational_response``,
#: ``utilities.validate_headers``, ``utilities.normalize_inbound_headers`` and the checks
#: it runs per field: ``_reject_illegal_characters``, ``_reject_empty_header_names``,
#: ``_reject_te``, ``_reject_connection_header``; and those whose outcome on a plain block
#: it assumes: ``_reject_pseudo_header_fields``, ``_check_pseudo_header_field_acceptability``,
#: ``_assert_header_in_set``, ``_check_host_authority_header``, ``_check_path_header``,
#: ``_combine_cookie_fields``, ``H2Stream._build_hdr_validation_flags``,
#: ``H2StreamStateMachine.process_input``, ``H2Connection._get_or_create_stream``), joined
H2_RECEIVE_HEADERS_SHA256 = "04cf3338d2bf9f18e4336ff8f833b4d1ff974ed1009e9d0a522e4fd3b3103407"

_CLIENT_OPEN = h2.connection.ConnectionState.CLIENT_OPEN
_CLOSED = h2.stream.StreamState.CLOSED
_RECV_END_STREAM = h2.stream.StreamClosedBy.RECV_END_STREAM
_RECV_HEADERS = h2.connection.ConnectionInputs.RECV_HEADERS
_REGULAR = 1  #: a field that passed h2's per-field checks, name not a pseudo-header
_STATUS = 2  #: a ``:status`` field that passed them, not 1xx
#: names whose fields h2 transforms or reads (cookies joined, content-length checked)
_SPECIAL_NAMES = frozenset((b"cookie", b"content-length"))


def _field_kind(field: tuple[bytes, bytes]) -> int:
    """:data:`_REGULAR` or :data:`_STATUS` for a field h2's per-field checks accept (run
    here, h2's own generators), 0 for one h2 rejects, transforms or reads."""
    name = field[0]
    if not isinstance(name, bytes) or not isinstance(field[1], bytes):
        return 0
    if name in _SPECIAL_NAMES:
        return 0
    u = h2.utilities
    flags = u.HeaderValidationFlags(False, False, False, False)  # unused by these four
    try:
        for _ in u._reject_connection_header(
            u._reject_te(
                u._reject_empty_header_names(u._reject_illegal_characters([field], flags), flags),
                flags,
            ),
            flags,
        ):
            pass
    except h2.exceptions.ProtocolError:
        return 0
    if name[:1] != b":":
        return _REGULAR
    if name == b":status" and field[1][:1] != b"1":
        return _STATUS
    return 0


#: fields already checked -> their kind (bounded: cleared when full). Process-wide, so
#: it holds only short fields (a server's long values, up to a frame each, would stay
#: in memory across connections) and no never-indexed (sensitive) ones.
_KINDS: dict[tuple[bytes, bytes], int] = {}
_MAX_KINDS = 512
_MAX_KIND_FIELD = 128  #: name + value bytes of a field the cache may hold


def _plain_block(headers: list[Any], trailers: bool, end_stream: bool) -> bool:
    """Whether h2 accepts ``headers`` (a decoded response block, or trailers) unchanged:
    h2's validation and normalisation would return the same list and raise nothing, and
    its ``receive_headers`` take the plain response / trailers transitions."""
    kinds = _KINDS
    if trailers:
        if not end_stream:
            return False  # h2: "Trailers must have END_STREAM set"
        first = 0
    else:
        if not headers:
            return False
        first = 1
    for i, field in enumerate(headers):
        kind = kinds.get(field)
        if kind is None:
            kind = _field_kind(field)
            if len(field[0]) + len(field[1]) <= _MAX_KIND_FIELD and getattr(
                field, "indexable", True
            ):
                if len(kinds) >= _MAX_KINDS:
                    kinds.clear()
                kinds[(field[0], field[1])] = kind
        if kind != (_STATUS if i < first else _REGULAR):
            return False
    return True


_IDLE = h2.connection.ConnectionState.IDLE
_HALF_CLOSED_LOCAL = h2.stream.StreamState.HALF_CLOSED_LOCAL
_FAST_STATES = frozenset((h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL))


def _hpack_int(value: int, prefix_bits: int, flags: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with an N-bit prefix, the first byte's high bits
    ``flags``."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes((flags | value,))
    out = bytearray((flags | top,))
    value -= top
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_str(data: bytes) -> bytes:
    """An HPACK string literal, not Huffman-coded (RFC 7541 §5.2)."""
    return _hpack_int(len(data), 7, 0) + data


#: RFC 7541 Appendix A: (name, value) -> index and name -> index (the first of each)
_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELD.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)


class StatelessEncoder(Encoder):
    """hpack's encoder for header blocks that never use the dynamic table.

    A field whose name and value are in the static table is sent indexed (RFC 7541
    §6.1); any other as a literal *without indexing* (§6.2.2; *never indexed*, §6.2.3,
    for a field h2 or the caller marked so), the name by its static index where it has
    one, no string Huffman-coded. Such a block adds nothing to the decoder's table, so
    hpack's own encoder (and its table) stays in step with the peer's whatever the mix.
    A block that must carry a dynamic table size update (the peer changed
    SETTINGS_HEADER_TABLE_SIZE) and a ``dict`` of headers go to hpack's ``encode``.
    Encoded fields are remembered (at most :attr:`MAX_CACHED`; a call's fixed headers
    repeat, its ``grpc-timeout`` seldom does), never-indexed ones (secrets) are not.
    """

    MAX_CACHED = 256

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if self.header_table.resized or isinstance(headers, dict):
            return super().encode(headers, huffman)
        cache = self._fields
        out = []
        for field in headers:
            name, value = field[0], field[1]
            if isinstance(name, str):
                name = name.encode()
            if isinstance(value, str):
                value = value.encode()
            never = not getattr(field, "indexable", True) or (len(field) > 2 and bool(field[2]))
            if never:  # a secret (a token): encoded each time, never remembered
                out.append(_field(name, value, True))
                continue
            key = (name, value)
            block = cache.get(key)
            if block is None:
                block = _field(name, value, False)
                if len(cache) >= self.MAX_CACHED:
                    cache.clear()
                cache[key] = block
            out.append(block)
        return b"".join(out)


def _field(name: bytes, value: bytes, never: bool) -> bytes:
    if not never:
        index = _STATIC_FIELD.get((name, value))
        if index is not None:
            return _hpack_int(index, 7, 0x80)
    flags = 0x10 if never else 0x00
    name_index = _STATIC_NAME.get(name)
    if name_index is not None:
        return _hpack_int(name_index, 4, flags) + _hpack_str(value)
    return bytes((flags,)) + _hpack_str(name) + _hpack_str(value)


class Connection(h2.connection.H2Connection):
    """h2's client connection, counting its open outbound streams in amortised O(1).

    ``open_outbound_streams`` compares the same against ``max_concurrent_streams`` as
    h2's exact count (``value < max`` and ``value + 1 > max`` are what h2's
    ``send_headers`` and :meth:`H2Channel.start_call` ask): while the streams h2 holds
    (open or closed, an upper bound of the open ones) are fewer than the limit it returns
    that bound; otherwise, and whenever the held streams doubled since the last scan (so
    closed streams are still dropped and memory stays bounded), it runs h2's own scan.
    """

    _scan_at = 64  #: held streams at which the next count scans (and prunes) anyway

    def __init__(self, config: h2.config.H2Configuration | None = None) -> None:
        super().__init__(config)
        self.encoder = StatelessEncoder()  # request headers without the dynamic table

    @property
    def open_outbound_streams(self) -> int:
        held = len(self.streams)
        if held < self._scan_at and held < self.remote_settings.max_concurrent_streams:
            return held  # >= the open count, below the limit: every comparison agrees
        count: int = super().open_outbound_streams  # h2's scan: prunes closed streams
        self._scan_at = 2 * len(self.streams) + 64
        return count

    def send_request(self, stream_id: int, headers: list[tuple[bytes, bytes]], data: bytes) -> bool:
        """A client request in one HEADERS frame and one DATA frame with END_STREAM,
        leaving h2's state as ``send_headers(stream_id, headers)`` followed by
        ``send_data(stream_id, data, end_stream=True)`` does (with this connection's
        configuration: no header validation or normalisation) and the same bytes queued,
        without h2's frame objects, state-machine lookups and header copies.

        ``headers`` are bytes pairs (or hpack's header tuples) encoded by the same
        :class:`StatelessEncoder` as h2's path would. False (nothing changed) when the
        request is not that simple case — the connection not open for requests, the
        stream known, the header block or ``data`` over one frame or the windows, a
        dynamic table size update due, the stream limit reached — and the caller uses
        h2's two calls (which raise what h2 raises).
        """
        size = len(data)
        max_frame = self.max_outbound_frame_size
        state = self.state_machine.state
        if (
            (state is not _CLIENT_OPEN and state is not _IDLE)
            or stream_id in self.streams
            or size > max_frame
            or size > self.outbound_flow_control_window
            or size > self.remote_settings.initial_window_size
            or self.encoder.header_table.resized
            or self.open_outbound_streams + 1 > self.remote_settings.max_concurrent_streams
        ):
            return False
        block = self.encoder.encode(headers)  # stateless: nothing to undo if we stop here
        if len(block) > max_frame:
            return False  # h2 adds CONTINUATION frames
        if state is _IDLE:  # the connection's first request: IDLE -> CLIENT_OPEN, as h2
            self.state_machine.process_input(h2.connection.ConnectionInputs.SEND_HEADERS)
        st = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)  # h2's own checks
        sm = st.state_machine
        # IDLE --SEND_HEADERS (request_sent)--> OPEN --SEND_DATA--> OPEN
        # --SEND_END_STREAM--> HALF_CLOSED_LOCAL
        sm.client = True
        sm.headers_sent = True
        sm.state = _HALF_CLOSED_LOCAL
        method = authority = None  # h2: extract_method_header, authority_from_headers
        for name, value in headers:
            if name == b":method" and method is None:
                method = value
            elif name == b":authority" and authority is None:
                authority = value
        st._authority = authority
        st.request_method = method
        st.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        sid = stream_id.to_bytes(4, "big")
        self._data_to_send += b"".join(
            (
                len(block).to_bytes(3, "big"),
                b"\x01\x04",  # HEADERS, END_HEADERS
                sid,
                block,
                size.to_bytes(3, "big"),
                b"\x00\x01",  # DATA, END_STREAM
                sid,
                data,
            )
        )
        return True

    def receive_headers(
        self, stream_id: int, block: bytes, end_stream: bool
    ) -> tuple[bool, list[Any]] | None:
        """A HEADERS frame with END_HEADERS, no padding and no priority, received on
        ``stream_id``, as ``receive_data`` of it would take it.

        None (nothing changed) when h2 must see the frame itself: the connection not
        open, the stream unknown or not half-closed by us, its trailers already in, a
        HEAD request. Otherwise the block is decoded by h2's ``_decode_headers`` (the
        dynamic table moves as in h2), and returns either ``(True, headers)`` (a plain
        response or trailers: the stream updated as h2's ``receive_headers`` updates it,
        no event built; the caller acts as on ``ResponseReceived`` /
        ``TrailersReceived`` and, with ``end_stream``, ``StreamEnded``) or, when the
        block is anything else, ``(False, events)``: h2's own events from the rest of
        ``_receive_headers_frame``. A ``ProtocolError`` queues h2's GOAWAY and
        propagates, as in ``receive_data``.
        """
        if self.state_machine.state is not _CLIENT_OPEN or self.config.header_encoding:
            return None
        st = self.streams.get(stream_id)
        if st is None:
            return None
        sm = st.state_machine
        if (
            sm.state is not _HALF_CLOSED_LOCAL
            or sm.trailers_received
            or sm.client is not True
            or st.request_method == b"HEAD"
        ):
            return None
        try:
            headers = _decode_headers(self.decoder, block)  # h2's: hpack's table, h2's errors
            if not isinstance(headers, list):  # hpack returns a list
                headers = list(headers)
            trailers = bool(sm.headers_received)
            if _plain_block(headers, trailers, end_stream):
                # HALF_CLOSED_LOCAL --RECV_HEADERS (response_received)--> HALF_CLOSED_LOCAL
                if trailers:
                    sm.trailers_received = True
                else:
                    sm.headers_received = True
                if end_stream:  # --RECV_END_STREAM (stream_ended)--> CLOSED
                    sm.state = _CLOSED
                    sm.stream_closed_by = _RECV_END_STREAM
                st._expected_content_length = None  # no content-length field, not HEAD
                return True, headers
            # h2's _receive_headers_frame after its decode (no PRIORITY flag here)
            events = self.state_machine.process_input(_RECV_HEADERS)
            stream = self._get_or_create_stream(
                stream_id, AllowedStreamIDs(not self.config.client_side)
            )
            frames, stream_events = stream.receive_headers(
                headers, end_stream, self.config.header_encoding
            )
            self._prepare_for_sending(frames)
            return False, events + stream_events
        except h2.exceptions.ProtocolError as e:  # as H2Connection.receive_data
            self._terminate_connection(e.error_code)
            raise

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        """h2 4.4.1's ``_receive_frame`` without ``logger.trace("...", repr(frame))``,
        whose argument is built even when the logger is h2's no-op default."""
        if type(self.config.logger) is not h2.config.DummyLogger:
            return super()._receive_frame(frame)  # someone reads h2's log: h2's own
        events: list[h2.events.Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


def feed(ch: H2Channel, data: bytes) -> bytes:
    """Process the complete frames in ``data``; return the incomplete tail.

    DATA frames of open calls (no padding, no END_STREAM) take a fast path: the
    frame header is parsed here and h2's flow-control and stream state are updated
    exactly as ``H2Connection.receive_data`` would, without building h2's frame and
    event objects (about half the client's cost per streamed message). A call's
    response HEADERS and trailers (END_HEADERS, no padding or priority) go to
    :meth:`Connection.receive_headers` (unless :data:`FAST_HEADERS` is off). Every
    other frame, and any frame the fast paths are not certain about, goes to h2 in
    order, so h2 still validates everything it sees.
    """
    h2c = ch.h2
    calls = ch.calls
    dispatch = ch.dispatch
    end = len(data)
    pos = 0
    h2_from = 0  # start of the run of frames not yet handed to h2
    max_frame = h2c.max_inbound_frame_size
    fast_headers = FAST_HEADERS
    while end - pos >= 9:
        length = int.from_bytes(data[pos : pos + 3], "big")
        if length > max_frame:
            # Fail on the header: h2 would first buffer the whole announced frame
            # (a server announcing 16 MiB and stalling would hang the call).
            if h2_from < pos:
                dispatch(h2c.receive_data(data[h2_from:pos]))
            h2c.close_connection(error_code=h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            raise h2.exceptions.FrameTooLargeError(
                f"Received overlong frame: length {length}, max {max_frame}"
            )
        stop = pos + 9 + length
        if stop > end:
            break
        ftype = data[pos + 3]
        flags = data[pos + 4]
        if ftype == 0 and not flags & 0x09 and not ch.in_header_block:
            if h2_from < pos:
                dispatch(h2c.receive_data(data[h2_from:pos]))
            h2_from = pos
            sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            call = calls.get(sid)
            if call is not None and not call.ended and fast_window(h2c, sid, length):
                call.on_data(data[pos + 9 : stop], length)
                h2_from = stop
        elif ftype == 1 and flags & 0x2C == 0x04 and not ch.in_header_block and fast_headers:
            # HEADERS, END_HEADERS, not PADDED, not PRIORITY: a response or trailers
            if h2_from < pos:
                dispatch(h2c.receive_data(data[h2_from:pos]))
            h2_from = pos
            sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            end_stream = bool(flags & 0x01)
            got = h2c.receive_headers(sid, data[pos + 9 : stop], end_stream)
            if got is not None:
                h2_from = stop
                plain, items = got
                if not plain:
                    dispatch(items)
                else:
                    call = calls.get(sid)
                    if call is not None:
                        call.on_headers(items, end_stream)
                    if end_stream:
                        if call is not None:
                            call.on_end()
                        ch.slot_lot.unpark_all()
        elif ftype in {1, 5, 9}:  # HEADERS, PUSH_PROMISE, CONTINUATION
            ch.in_header_block = not flags & 0x04
        pos = stop
    if h2_from < pos:
        dispatch(h2c.receive_data(data[h2_from:pos]))
    return data[pos:] if pos < end else b""


#: response HEADERS and trailers through :meth:`Connection.receive_headers` (the
#: differential test turns it off for the h2-only side)
FAST_HEADERS = True


def fast_window(h2c: h2.connection.H2Connection, sid: int, length: int) -> bool:
    """Account for an unpadded DATA frame of ``length`` bytes on ``sid`` as h2 would
    (connection state, stream state, both inbound windows); False (nothing changed)
    when h2 must see the frame itself."""
    if h2c.state_machine.state is not _CLIENT_OPEN:
        return False
    st = h2c.streams.get(sid)
    if st is None:
        return False
    sm = st.state_machine
    if sm.state not in _FAST_STATES or not sm.headers_received:
        return False
    if st._expected_content_length is not None:
        return False
    cw = h2c._inbound_flow_control_window_manager
    sw = st._inbound_window_manager
    if cw.current_window_size < length or sw.current_window_size < length:
        return False  # h2 raises the FLOW_CONTROL_ERROR
    cw.current_window_size -= length
    sw.current_window_size -= length
    st._actual_content_length += length
    return True
