"""What a site serves: an online-learned blend of two models, and the prequential metrics of each.

:class:`Blend` is what a site serves (and how its personal model joins its online and deep
learners): an :class:`ExpertMixture` scored before it learns.

:class:`ExpertMixture` blends two models' logits ``z1`` and ``z2``. Its experts are the two models
as they are, and, for each weight ``a`` of a fixed grid, the blend ``a z1 + (1 - a) z2`` passed
through its own online Platt scaling ``s z + c`` (so a model whose ranking is good but whose
calibration is off for this site, like a global model at a site with its own base rate, can still
be used). The scaling is fitted by online Newton steps on the accumulated curvature, which reach a
site's base rate within tens of records. The mixture predicts the average of the experts' probabilities weighted by
``exp(-L_k)``, ``L_k`` being expert ``k``'s discounted prequential log loss (exponential weights with
learning rate 1 on a mixable loss), from a prior that puts ``prior_first`` of the mass on the first
model alone (the site's personal model): without discounting, its cumulative log loss is at most
``ln(1 / prior_k)`` above that of any expert ``k``, whatever the experts are, so at most
``ln(1 / prior_first)`` above the personal model's. The discount lets it follow drift.

>>> from streamfed.topology.spec import BlendSpec
>>> mix = ExpertMixture(BlendSpec(grid=3))
>>> z1, z2 = np.array([4.0, -4.0]), np.array([0.0, 0.0])  # z1 knows, z2 does not
>>> mix.learn(z1, z2, np.array([1.0, 0.0]))
>>> round(mix.weight, 2) > 0.5
True
"""

from __future__ import annotations

import numpy as np

from streamfed.topology.spec import BlendSpec

EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


class ExpertMixture:
    """Exponentially weighted mixture over the two models and calibrated blends of them."""

    def __init__(self, spec: BlendSpec) -> None:
        grid = np.linspace(1.0, 0.0, spec.grid)
        # experts: [model 1 alone, model 2 alone, calibrated blends on the grid]
        self.alphas = np.concatenate([[1.0, 0.0], grid])
        self.calibrated = np.concatenate([[False, False], np.ones(spec.grid, dtype=bool)])
        self.scale = np.ones(len(self.alphas))
        self.bias = np.zeros(len(self.alphas))
        # curvature of each blend's log loss in (scale, bias), with a prior of ``calibration_prior`` records
        k = len(self.alphas)
        self.h_ss = np.full(k, spec.calibration_prior)
        self.h_sc = np.zeros(k)
        self.h_cc = np.full(k, spec.calibration_prior)
        # the prior: ``prior_first`` of the mass on the first model as it is, the rest spread evenly;
        # it enters as a starting loss of -ln(prior), so the regret to the first model is ln(1/prior)
        prior = np.full(len(self.alphas), (1.0 - spec.prior_first) / (len(self.alphas) - 1))
        prior[0] = spec.prior_first
        self.initial_loss = -np.log(prior)
        self.loss = self.initial_loss.copy()
        self.decay = 0.5 ** (1.0 / spec.half_life)
        self.seen = 0

    def _logits(self, z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
        z1 = np.asarray(z1, dtype=np.float64)[:, None]
        z2 = np.asarray(z2, dtype=np.float64)[:, None]
        return self.alphas * z1 + (1.0 - self.alphas) * z2  # (n, experts), before calibration

    def _posterior(self) -> np.ndarray:
        w = np.exp(-(self.loss - self.loss.min()))
        return w / w.sum()

    def predict(self, z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
        """P(y = 1) for each row, with the weights as they are (score before learning)."""
        if len(z1) == 0:
            return np.zeros(0)
        return _sigmoid(self._logits(z1, z2) * self.scale + self.bias) @ self._posterior()

    def learn(self, z1: np.ndarray, z2: np.ndarray, y: np.ndarray) -> None:
        """Charge each expert its log loss on labelled rows ``y`` (discounted), then calibrate."""
        if len(y) == 0:
            return
        raw = self._logits(z1, z2)
        p = np.clip(_sigmoid(raw * self.scale + self.bias), EPS, 1 - EPS)
        yy = np.asarray(y, dtype=np.float64)[:, None]
        losses = -(yy * np.log(p) + (1.0 - yy) * np.log1p(-p))  # (n, experts)
        n = len(y)
        # row i is discounted by decay^(n-1-i): the last row of the batch counts fully
        w = self.decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
        self.loss = self.loss * self.decay**n + w @ losses
        # Platt scaling of the blends: one online Newton step on the batch, with the curvature so far
        cal = self.calibrated
        err = (p - yy)[:, cal]
        u = raw[:, cal]
        curv = (p * (1 - p))[:, cal]
        self.h_ss[cal] += (curv * u * u).sum(axis=0)
        self.h_sc[cal] += (curv * u).sum(axis=0)
        self.h_cc[cal] += curv.sum(axis=0)
        g_s, g_c = (err * u).sum(axis=0), err.sum(axis=0)
        det = self.h_ss[cal] * self.h_cc[cal] - self.h_sc[cal] ** 2
        self.scale[cal] -= (self.h_cc[cal] * g_s - self.h_sc[cal] * g_c) / det
        self.bias[cal] -= (self.h_ss[cal] * g_c - self.h_sc[cal] * g_s) / det
        self.seen += n

    @property
    def weight(self) -> float:
        """The mixture's mean weight on the first model (1: only it, 0: only the second)."""
        return float(self._posterior() @ self.alphas)


class Blend:
    """An :class:`ExpertMixture` used prequentially: score a batch, then learn its labelled rows."""

    def __init__(self, spec: BlendSpec) -> None:
        self.mix = ExpertMixture(spec)

    def step(self, z1: np.ndarray, z2: np.ndarray, y: np.ndarray) -> np.ndarray:
        """P(y = 1) of each row with the weights as they are; then learn the rows whose label is known."""
        out = self.mix.predict(z1, z2)
        known = ~np.isnan(y)
        if known.any():
            self.mix.learn(z1[known], z2[known], y[known])
        return out

    @property
    def weight(self) -> float:
        """The mixture's mean weight on the first model (1: only it, 0: only the second)."""
        return self.mix.weight


class RollingAUC:
    """ROC AUC (ties counted half) and log loss over the last ``size`` labelled predictions."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.y = np.zeros(size, dtype=np.float64)
        self.p = np.zeros(size, dtype=np.float64)
        self.n = 0  # labelled predictions seen in all
        self._next = 0

    def update(self, y: np.ndarray, p: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.float64)[-self.size :]
        p = np.asarray(p, dtype=np.float64)[-self.size :]
        idx = (self._next + np.arange(len(y))) % self.size
        self.y[idx] = y
        self.p[idx] = p
        self._next = int((self._next + len(y)) % self.size)
        self.n += len(y)

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        k = min(self.n, self.size)
        return (self.y, self.p) if k == self.size else (self.y[:k], self.p[:k])

    def get_auc(self) -> float | None:
        if self.n < 20:
            return None
        y, p = self._live()
        pos = int((y == 1.0).sum())
        neg = len(y) - pos
        if pos == 0 or neg == 0:
            return None
        order = np.argsort(p, kind="mergesort")
        ranks = np.empty(len(p))
        sp = p[order]
        # average ranks over ties
        _, start, counts = np.unique(sp, return_index=True, return_counts=True)
        avg = start + (counts + 1) / 2.0
        ranks[order] = np.repeat(avg, counts)
        return float((ranks[y == 1.0].sum() - pos * (pos + 1) / 2.0) / (pos * neg))

    def get_logloss(self) -> float | None:
        if self.n == 0:
            return None
        y, p = self._live()
        q = np.clip(p, EPS, 1 - EPS)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))
