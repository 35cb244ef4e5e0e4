"""The trio driver of a sans-IO :class:`~atp_proto.frames.Connection`, for both roles.

* :mod:`.session` — :class:`Session`: reader, writer, timer, dispatch, authentication hook;
* :mod:`.output` — :class:`StreamOutput`, one stream's output as routing sees it;
* :mod:`.lanes` — weighted fair queuing across QoS lanes (shared with admission).

Below it: :mod:`atp_proto.transports`; above it: the router and the client. It imports
nothing from :mod:`atp_proto.router`.
"""

from .lanes import LANES, WEIGHTS, FairQueue
from .output import Output, StreamOutput
from .session import OUTPUT_HIGH_WATER, READ_PAUSE_BYTES, Session, SessionInfo, StreamRunner

__all__ = [
    "LANES",
    "OUTPUT_HIGH_WATER",
    "READ_PAUSE_BYTES",
    "WEIGHTS",
    "FairQueue",
    "Output",
    "Session",
    "SessionInfo",
    "StreamOutput",
    "StreamRunner",
]
