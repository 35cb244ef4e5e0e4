"""ATP v1 protocol core, sans-IO: the frame model, binary and JSON codecs, and the
connection/stream state machines. No I/O, no clock, no trio (spec/atp-v1.md).

The public API is ``__all__`` (tested, tests/frames/test_api.py): the Connection and its
events, errors and enums, the Frame and its codecs, Limits. The transition table
(``TRANSITIONS``, ``StreamInput``) is for tools and the spec generator and stays in
``atp_proto.frames._state``; the modules' other names are internal.

Layout, each module depending only on those above it::

    _types      enums, Limits, BudgetWindow, Encoding, flag bits, Payload
    _errors     ATPError and the protocol errors
    _cbor       strict CBOR (ext, payloads): the C accelerator _ccbor (_ccbor.c, built at
                install; its frame shortcuts serve _frame and _codec) or the pure-Python path
    _frame      Frame;  _codec: binary header codec, FrameDecoder;  _json: the text mapping
    _validate   stateless frame rules;  _events: what a Connection reports
    _state      the stream state table;  _windows: credit;  _fragments: reassembly
    _stream     Stream (state + seq + windows + reassembly);  _caps, _timers, _output
    _base       Connection's state;  _receiving (+ _control) / _sending: its two sides
    _connection Connection
"""

from ._codec import (
    HEADER,
    HEADER_SIZE,
    FrameDecoder,
    decode_ext,
    decode_frame,
    decode_frames,
    decode_payload,
    encode_frame,
    encode_frames,
    encoded_length,
)
from ._connection import Connection
from ._errors import (
    ATPError,
    BudgetExceeded,
    FrameDecodeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SequenceExhausted,
    StreamClosedError,
)
from ._events import (
    BudgetReported,
    CapabilitiesReceived,
    ConnectionClosed,
    Event,
    GoingAway,
    HeartbeatAcked,
    MessageReceived,
    StreamOpened,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from ._frame import Frame
from ._json import JsonMapping, frame_from_json, frame_to_json
from ._output import WS_MESSAGE_SLACK
from ._state import Role, StreamState
from ._types import (
    DEFAULT_LIMITS,
    MAX_STREAM_ID,
    MAX_WINDOW,
    VERSION,
    BudgetWindow,
    Encoding,
    ErrorCode,
    Flags,
    FrameType,
    Limits,
    Payload,
    QoS,
)
from ._validate import validate_frame

__all__ = [
    "ATPError",
    "BudgetExceeded",
    "BudgetReported",
    "BudgetWindow",
    "CapabilitiesReceived",
    "Connection",
    "ConnectionClosed",
    "DEFAULT_LIMITS",
    "Encoding",
    "ErrorCode",
    "Event",
    "Flags",
    "Frame",
    "FrameDecodeError",
    "FrameDecoder",
    "FrameType",
    "GoingAway",
    "HEADER",
    "HEADER_SIZE",
    "HeartbeatAcked",
    "JsonMapping",
    "Limits",
    "LocalProtocolError",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "WS_MESSAGE_SLACK",
    "MessageReceived",
    "Payload",
    "ProtocolError",
    "QoS",
    "RemoteProtocolError",
    "Role",
    "SequenceExhausted",
    "StreamClosedError",
    "StreamOpened",
    "StreamReset",
    "StreamState",
    "UnknownFrameReceived",
    "VERSION",
    "WindowUpdated",
    "decode_ext",
    "decode_frame",
    "decode_frames",
    "decode_payload",
    "encode_frame",
    "encode_frames",
    "encoded_length",
    "frame_from_json",
    "frame_to_json",
    "validate_frame",
]
