"""What the routing stages may use of the router: a narrow context, not the ``Router``
(which would close the routing <-> server circle, ARCHITECTURE §3.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from atp_proto.adapters import Adapter
from atp_proto.router.admission import Admission
from atp_proto.router.audit import AuditLog
from atp_proto.router.config import RouterConfig
from atp_proto.router.metrics import RouterMetrics

from .estimate_cache import EstimateCache
from .hedging import Hedger
from .learning import CheapFirst, Learner
from .policy import Policy

__all__ = ["RoutingContext"]


@dataclass(frozen=True, slots=True)
class RoutingContext:
    """Built once by the router, shared by every stream."""

    adapters: Mapping[str, Adapter]
    admission: Admission
    metrics: RouterMetrics
    config: RouterConfig
    policy: Policy
    learner: Learner = field(default_factory=CheapFirst)
    hedger: Hedger = field(default_factory=Hedger)  #: TTFC quantiles, hedge rate
    audit: AuditLog | None = None  #: the decision log (``--audit-log``), when configured
    #: estimates adapters allowed to reuse (``max_age_ms``, ATP-BUDGET-018/019)
    estimates: EstimateCache = field(default_factory=EstimateCache)
