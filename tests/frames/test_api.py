"""The public API of atp_proto.frames is its ``__all__``, tested (trio's model): adding or
removing a name is a decision, made here, not an accident of an import."""

from __future__ import annotations

import types

from atp_proto import frames

API = {
    # the connection and what it reports
    "Connection",
    "Role",
    "StreamState",
    "Encoding",
    "Event",
    "StreamOpened",
    "MessageReceived",
    "StreamReset",
    "WindowUpdated",
    "BudgetReported",
    "CapabilitiesReceived",
    "HeartbeatAcked",
    "GoingAway",
    "ConnectionClosed",
    "UnknownFrameReceived",
    # errors
    "ATPError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "FrameDecodeError",
    "StreamClosedError",
    "SequenceExhausted",
    "BudgetExceeded",
    # the frame model and its codecs
    "Frame",
    "Payload",
    "FrameType",
    "Flags",
    "QoS",
    "ErrorCode",
    "HEADER",
    "HEADER_SIZE",
    "FrameDecoder",
    "encode_frame",
    "encode_frames",
    "encoded_length",
    "decode_frame",
    "decode_frames",
    "decode_ext",
    "decode_payload",
    "validate_frame",
    "JsonMapping",
    "frame_to_json",
    "frame_from_json",
    # values and limits
    "Limits",
    "DEFAULT_LIMITS",
    "BudgetWindow",
    "VERSION",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "WS_MESSAGE_SLACK",
}


def test_the_export_list_is_the_api() -> None:
    assert len(frames.__all__) == len(set(frames.__all__)), "a name exported twice"
    assert set(frames.__all__) == API


def test_every_exported_name_exists_and_nothing_else_public_leaks() -> None:
    for name in frames.__all__:
        assert hasattr(frames, name), name
    public = {
        n
        for n, v in vars(frames).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and n != "annotations"
    }
    assert public == API


def test_tool_level_names_stay_in_their_module() -> None:
    from atp_proto.frames._state import TRANSITIONS, StreamInput

    assert TRANSITIONS and StreamInput.SEND_SYN
    assert "TRANSITIONS" not in frames.__all__ and "StreamInput" not in frames.__all__
