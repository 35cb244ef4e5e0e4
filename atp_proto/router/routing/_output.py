"""What a stream's routing code may do with its stream: the session's
:class:`~atp_proto.session.output.StreamOutput` (ARCHITECTURE.md §8), re-exported so the routing
stages import their seam from one place.

Routing never touches the session, its watermarks or the sans-IO ``Connection``: it writes
messages, waits for room, and is told about budget windows and resets.
"""

from __future__ import annotations

from atp_proto.session import SessionInfo, StreamOutput

__all__ = ["SessionInfo", "StreamOutput"]
