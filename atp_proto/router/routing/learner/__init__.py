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

from __future__ import annotations

from .bandit import BanditLearner, LaneBounds, Weights, parse_weights
from .features import Featurizer

__all__ = ["BanditLearner", "Featurizer", "LaneBounds", "Weights", "parse_weights"]
