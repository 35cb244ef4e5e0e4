"""The learned cost-quality router (issue 13 item 2) behind the
:class:`~atp_proto.router.routing.learning.Learner` seam.

* :mod:`.features` — what is known of a prompt before any call (length, shape, hashed
  word n-grams, task type) as a fixed-size vector;
* :mod:`.model` — per-adapter Bayesian ridge models of answer quality;
* :mod:`.bandit` — :class:`BanditLearner`: Thompson sampling over quality, cost and
  latency with weights per tenant plan, exploration bounded per lane, feedback by
  decision id (ATP-FEED-001..006);
* :mod:`.offline` — training from ``routing-data`` records;
* :mod:`.store` — SQLite state and its JSON export (ATP-FEED-007).
"""

# The names load on first use (PEP 562): they need numpy, which a router without the
# bandit learner (the default, cheap-first) never imports.
from __future__ import annotations

from typing import TYPE_CHECKING

from atp_proto._lazy import lazy_names

if TYPE_CHECKING:
    from .bandit import BanditLearner, LaneBounds, Weights, parse_weights
    from .features import Featurizer

_EXPORTS = {
    "BanditLearner": ".bandit",
    "LaneBounds": ".bandit",
    "Weights": ".bandit",
    "parse_weights": ".bandit",
    "Featurizer": ".features",
}

__all__ = ["BanditLearner", "Featurizer", "LaneBounds", "Weights", "parse_weights"]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, globals())
