"""The per-frame rules that need no session state, in one place.

:func:`validate_frame` is what a frame of a known type must satisfy whatever the session
has seen: which stream it may travel on, the shape of its control ext, the heartbeat
size. :class:`~atp_proto.frames.Connection` applies it to every frame it receives (then
applies the rules that do need state: stream states, sequence numbers, credit left), and
``atp frames decode`` applies it to every frame it shows, so that the tool refuses what a
peer would refuse (spec §4, §6.1, §8, §10).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ._errors import RemoteProtocolError
from ._frame import Frame
from ._types import (
    DEFAULT_LIMITS,
    HB_BIT,
    MAX_WINDOW,
    SYN_BIT,
    VERSION,
    ErrorCode,
    FrameType,
    Limits,
    is_uint,
)

__all__ = ["validate_frame", "valid_window"]

_SYN: Final = SYN_BIT
_HB: Final = HB_BIT
_WINDOW_KEYS: Final = ("max_parallel", "max_tokens", "max_usd_micros")


_is_uint = is_uint


def valid_window(raw: object) -> bool:
    """A budget ``window`` map: every field present is an unsigned integer (ATP-BUDGET-008)."""
    if not isinstance(raw, Mapping):
        return False
    return all(_is_uint(raw[k]) for k in _WINDOW_KEYS if k in raw)


def validate_frame(frame: Frame, limits: Limits = DEFAULT_LIMITS) -> None:
    """Check the stateless rules of one received frame.

    A frame of an unknown type passes (ATP-FRAME-010: it is ignored, unread).

    Raises:
        RemoteProtocolError: the spec's code; ``stream_id`` 0 for a connection error.
    """
    ftype = frame.type
    sid = frame.stream_id
    ext = frame.ext
    if ext:
        _check_session_id(ext, sid, limits)
    if ftype == FrameType.DATA:
        if sid == 0:
            if not frame.flags & _HB:  # ATP-FRAME-011
                raise RemoteProtocolError(ErrorCode.EPROTO, "DATA on stream 0 without HB")
            if len(frame.payload) > limits.max_hb_payload:
                raise RemoteProtocolError(
                    ErrorCode.ETOOBIG, f"heartbeat payload over {limits.max_hb_payload} bytes"
                )
        elif frame.flags & _SYN and ext:
            if "window" in ext and not valid_window(ext["window"]):
                # ATP-BUDGET-008: an invalid field is an error, never "unlimited"
                raise RemoteProtocolError(
                    ErrorCode.EPROTO,
                    '"window" must map max_parallel / max_tokens / max_usd_micros to '
                    "unsigned integers",
                    stream_id=sid,
                )
            if "meta" in ext and not isinstance(ext["meta"], Mapping):
                # ATP-FRAME-025: never read as "no meta" (its policy keys would be lost)
                raise RemoteProtocolError(ErrorCode.EPROTO, '"meta" must be a map', stream_id=sid)
    elif ftype == FrameType.WINDOW_UPDATE:
        _check_window_update(ext, sid)
    elif ftype == FrameType.ERROR:
        err = ext.get("error")
        if (
            not isinstance(err, Mapping)
            or not isinstance(err.get("code"), str)
            or not isinstance(err.get("message"), str)
        ):  # ATP-FRAME-015
            raise RemoteProtocolError(
                ErrorCode.EPROTO,
                'ERROR frame without an "error" map holding a text "code" and "message"',
                stream_id=sid,
            )
    elif ftype == FrameType.CAPABILITIES:
        _check_capabilities(ext, sid)
    elif ftype == FrameType.BUDGET_UPDATE and sid == 0:  # ATP-FRAME-012
        raise RemoteProtocolError(ErrorCode.EPROTO, "BUDGET_UPDATE on stream 0")


def _check_session_id(ext: Mapping[str, Any], sid: int, limits: Limits) -> None:
    if "session_id" not in ext:
        return
    session_id = ext["session_id"]
    if not isinstance(session_id, str) or len(session_id) > limits.max_alias_len:
        # §12: max session_id length, in both encodings; a null is not text (ATP-EXT-010)
        raise RemoteProtocolError(
            ErrorCode.EPROTO,
            f'"session_id" must be text of at most {limits.max_alias_len} characters',
            stream_id=sid,
        )


def _check_window_update(ext: Mapping[str, Any], sid: int) -> None:
    if sid == 0:  # ATP-FRAME-012
        raise RemoteProtocolError(ErrorCode.EPROTO, "WINDOW_UPDATE on stream 0")
    credit = ext.get("credit")
    raw_window = ext.get("window")
    if credit is None and raw_window is None:  # ATP-FRAME-019
        raise RemoteProtocolError(
            ErrorCode.EPROTO, "WINDOW_UPDATE carries neither credit nor window", stream_id=sid
        )
    # ATP-FLOW-004: the range is the frame's, stateless (ATP-FRAME-023): 2^31 is EPROTO;
    # EWINDOW is only for a valid increment the window cannot take (_windows.grant).
    if credit is not None and (not _is_uint(credit) or not 1 <= credit <= MAX_WINDOW):
        raise RemoteProtocolError(
            ErrorCode.EPROTO,
            f"credit must be a positive integer in 1..{MAX_WINDOW}, got {credit!r}",
            stream_id=sid,
        )
    if raw_window is not None and not valid_window(raw_window):  # ATP-FRAME-020
        raise RemoteProtocolError(
            ErrorCode.EPROTO, '"window" must map budget names to unsigned integers', stream_id=sid
        )


def _check_capabilities(ext: Mapping[str, Any], sid: int) -> None:
    if sid != 0:  # ATP-FRAME-013
        raise RemoteProtocolError(ErrorCode.EPROTO, "CAPABILITIES on a stream", stream_id=sid)
    caps = ext.get("caps")
    if not isinstance(caps, Mapping):
        raise RemoteProtocolError(ErrorCode.EPROTO, 'CAPABILITIES without a "caps" map')
    versions = caps.get("versions")
    if not isinstance(versions, list) or not versions:  # §6.1: REQUIRED (ATP-SESS-011)
        raise RemoteProtocolError(
            ErrorCode.EPROTO, '"caps" must carry "versions", a non-empty array of integers'
        )
    if not any(_is_uint(v) and v == VERSION for v in versions):  # ATP-SESS-003
        raise RemoteProtocolError(
            ErrorCode.EPROTO, f"no common version: peer offers {versions!r}, we speak {VERSION}"
        )
