"""Capabilities: what we advertise, and what the peer's CAPABILITIES let us send
(ATP-SESS, spec §"Capabilities").

Values, not handlers: :func:`our_caps` is the map our CAPABILITIES frame carries;
:meth:`PeerCaps.parse` reads a peer's map into the three limits the send path obeys. A
field that is absent or out of range keeps its previous value (the spec's default until
the first CAPABILITIES): a peer cannot make us send frames smaller than 1 KiB, nor a window
outside 1..2^31-1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ._types import DEFAULT_LIMITS, MAX_WINDOW, VERSION, Limits, is_uint
from ._windows import frag_size

__all__ = ["FEATURES", "PeerCaps", "our_caps"]

FEATURES: Final = ("json", "fragmentation", "budget", "heartbeat")


@dataclass(frozen=True, slots=True)
class PeerCaps:
    """What the peer accepts from us."""

    frame_size: int = DEFAULT_LIMITS.max_frame_size
    initial_window: int = DEFAULT_LIMITS.initial_window
    max_streams: int = DEFAULT_LIMITS.max_streams
    #: the largest message (reassembled payload) the peer accepts (ATP-LIMIT-004)
    message_size: int = DEFAULT_LIMITS.max_message_size

    def parse(self, caps: Mapping[str, Any]) -> PeerCaps:
        """These limits updated by a peer's CAPABILITIES map (already validated as a map
        offering version 1)."""
        fs = caps.get("max_frame_size")
        win = caps.get("initial_window")
        ms = caps.get("max_streams")
        mm = caps.get("max_message_size")
        return PeerCaps(
            fs if is_uint(fs) and fs >= 1024 else self.frame_size,
            win if is_uint(win) and 1 <= win <= MAX_WINDOW else self.initial_window,
            ms if is_uint(ms) else self.max_streams,
            mm if is_uint(mm) else self.message_size,
        )

    @property
    def frag_size(self) -> int:
        """The largest fragment body we send this peer (see :func:`frag_size`)."""
        return frag_size(self.frame_size, self.initial_window)


def our_caps(limits: Limits) -> dict[str, Any]:
    """The map of our CAPABILITIES frame: what we accept, from ``limits``."""
    return {
        "versions": [VERSION],
        "max_frame_size": limits.max_frame_size,
        "max_message_size": limits.max_message_size,
        "initial_window": limits.initial_window,
        "max_streams": limits.max_streams,
        "heartbeat_ms": limits.heartbeat_ms,
        "idle_timeout_ms": limits.idle_timeout_ms,
        "features": list(FEATURES),
    }
