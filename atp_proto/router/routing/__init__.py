"""The routing pipeline, in stages with data in and data out (ARCHITECTURE §5.1):

policy (:mod:`.policy`) → preflight (:mod:`.preflight`) → admission → fan-out and failover
(:mod:`.fanout`) → merge (:mod:`.merge`) → escalation (:mod:`.escalation`) → FINAL
telemetry (:mod:`.telemetry`); :class:`StreamRun` (:mod:`.run`) strings them together for
one stream. The stages see a narrow :class:`RoutingContext`, never the ``Router``, and the
stream only through the :class:`StreamOutput` protocol.
"""

from ._model import Candidate, Outcome, StreamFailed, adapter_failure
from ._output import SessionInfo, StreamOutput
from .context import RoutingContext
from .policy import Decision, Policy, PolicyInput, PrincipalPolicy
from .preflight import GUARD_K
from .run import TTL_GRACE_MS, StreamRun

__all__ = [
    "GUARD_K",
    "TTL_GRACE_MS",
    "Candidate",
    "Decision",
    "Outcome",
    "Policy",
    "PolicyInput",
    "PrincipalPolicy",
    "RoutingContext",
    "SessionInfo",
    "StreamFailed",
    "StreamOutput",
    "StreamRun",
    "adapter_failure",
]
