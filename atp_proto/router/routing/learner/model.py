"""Per-adapter Bayesian linear models of answer quality (the bandit's arms).

Each arm predicts the quality in [0, 1] of one adapter's answer from the prompt's features
(:mod:`.features`) by Bayesian ridge regression: prior ``theta ~ N(0, P^-1)`` around
a constant prior quality of 0.5, with ``P = ridge * I`` except the bias term's precision,
``bias_ridge`` (weaker: an adapter's mean quality is learned from a few answers, a word's
effect needs many), posterior kept as ``A^-1`` and ``b`` (``A = P + sum w x x^T``,
``b = sum w (q - 0.5) x``). The prior lives only in a new arm's ``A^-1``: a saved state
carries it, and the state format does not change. An observation is one Sherman-Morrison update
(O(dim^2), no inversion); a batch (offline training) is one solve. Thompson sampling needs
only the predictive distribution of the one query: ``q ~ N(x.mu, noise^2 x^T A^-1 x)``,
which is exact for a linear model and costs O(dim^2), not a dim^3 Cholesky.

Cost and latency are not learned from the prompt: the router knows the guard-banded cost
estimate before the call, and latency is tracked per arm as a moving average.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["DENSE", "PRIOR_QUALITY", "Arm"]

Vector = npt.NDArray[np.float64]

#: the dense head of a feature vector (bias, lengths, shape: features._DENSE); the rest
#: are the prompt's hashed words
DENSE = 8
#: the quality an arm is expected to give before it has any data
PRIOR_QUALITY = 0.5


@dataclass(slots=True)
class Arm:
    """One adapter's quality model and running statistics."""

    a_inv: npt.NDArray[np.float64]  #: (dim, dim) posterior precision, inverted
    b: Vector  #: (dim,)
    n: float = 0.0  #: total weight of the quality observations
    feedback_n: int = 0  #: of them, reports by feedback (ATP-FEED-001)
    q_sum: float = 0.0  #: sum of weighted qualities (the plain mean, for `routing show`)
    latency_ms: float = 0.0  #: moving average of observed call latency (0: none yet)
    latency_n: int = 0
    failures: int = 0
    _theta: Vector | None = field(default=None, repr=False)

    @classmethod
    def prior(
        cls,
        dim: int,
        ridge: float,
        bias_ridge: float | None = None,
        dense_ridge: float | None = None,
    ) -> Arm:
        """The prior: ``theta ~ N(0, I / ridge)``, except the bias (feature 0), whose prior
        precision is ``bias_ridge`` (weaker: an adapter's mean quality is learned from a
        few answers, a word's effect from many), and the rest of the dense head (features
        1 .. ``DENSE`` - 1: lengths, numbers, shape), whose precision is ``dense_ridge``
        when given."""
        a_inv = np.eye(dim) / ridge
        if dense_ridge is not None:
            a_inv[1:DENSE, 1:DENSE] = np.eye(DENSE - 1) / dense_ridge
        if bias_ridge is not None:
            a_inv[0, 0] = 1.0 / bias_ridge
        return cls(a_inv, np.zeros(dim))

    @property
    def dim(self) -> int:
        return int(self.b.shape[0])

    def theta(self) -> Vector:
        if self._theta is None:
            self._theta = self.a_inv @ self.b
        return self._theta

    def predict(self, x: Vector, idx: npt.NDArray[np.intp] | None = None) -> tuple[float, float]:
        """Posterior mean quality and the variance of that mean (before noise scaling).

        A prompt sets a few dozen of the vector's entries: the quadratic form is taken over
        those only (``idx``, the non-zero entries, computed here when not given: the
        ranker computes it once per stream for all candidates), a few thousand products
        instead of ``dim**2`` -- per-stream ranking stays cheap with many candidates."""
        if idx is None:
            idx = np.flatnonzero(x)
        xi = x[idx]
        mean = PRIOR_QUALITY + float(xi @ self.theta()[idx])
        var = float(xi @ self.a_inv[np.ix_(idx, idx)] @ xi)
        return mean, max(var, 0.0)

    def variance(self, x: Vector, idx: npt.NDArray[np.intp], boost: float) -> float:
        """The quadratic form of :meth:`predict` with the prompt's own features (every
        entry past the dense head, ``DENSE``) weighted by ``boost``: an exploration that
        depends on the prompt more than the posterior says (``context_explore``)."""
        xi = x[idx] * np.where(idx >= DENSE, np.sqrt(boost), 1.0)
        return max(0.0, float(xi @ self.a_inv[np.ix_(idx, idx)] @ xi))

    def update(self, x: Vector, quality: float, weight: float = 1.0) -> None:
        """One observation of ``quality`` (clipped to [0, 1]) for features ``x``."""
        q = min(1.0, max(0.0, quality))
        if weight <= 0:
            return
        idx = np.flatnonzero(x)
        ax = self.a_inv[:, idx] @ x[idx]  # a_inv is symmetric: a column block suffices
        denom = 1.0 / weight + float(x @ ax)
        self.a_inv -= np.outer(ax, ax) / denom
        self.b += weight * (q - PRIOR_QUALITY) * x
        self.n += weight
        self.q_sum += weight * q
        self._theta = None

    def update_batch(self, xs: npt.NDArray[np.float64], qualities: Vector) -> None:
        """Many observations at once (offline training): one inversion instead of n updates."""
        if len(xs) == 0:
            return
        q = np.clip(qualities, 0.0, 1.0)
        precision = np.linalg.inv(self.a_inv) + xs.T @ xs
        inv = np.linalg.inv(precision)
        self.a_inv = np.asarray((inv + inv.T) / 2, dtype=np.float64)  # keep it symmetric
        self.b += xs.T @ (q - PRIOR_QUALITY)
        self.n += float(len(xs))
        self.q_sum += float(q.sum())
        self._theta = None

    def observe_latency(self, latency_ms: float, alpha: float = 0.1) -> None:
        if latency_ms < 0:
            return
        if self.latency_n == 0:
            self.latency_ms = latency_ms
        else:
            self.latency_ms += alpha * (latency_ms - self.latency_ms)
        self.latency_n += 1
