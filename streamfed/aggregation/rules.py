"""Rules that combine a buffer of deltas into one: pure functions of (deltas, weights).

>>> import numpy as np
>>> d = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
>>> Mean()(d, np.array([1.0, 3.0])).tolist()
[2.5, 3.5]
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamfed.errors import ConfigError
from streamfed.topology.spec import AggregationSpec

Matrix = npt.NDArray[np.float32]


class Rule(Protocol):
    name: str

    def __call__(self, deltas: Matrix, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]: ...


def _check(deltas: Matrix, weights: npt.NDArray[np.float64]) -> None:
    if deltas.ndim != 2 or len(deltas) == 0:
        raise ValueError("deltas must be a non-empty (n, d) matrix")
    if weights.shape != (len(deltas),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be non-negative, one per delta, with a positive sum")


class Mean:
    """Weighted mean (FedBuff's default)."""

    name = "mean"

    def __call__(self, deltas: Matrix, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        _check(deltas, weights)
        w = weights / weights.sum()
        return (w @ deltas.astype(np.float64)).astype(np.float32)


class CoordinateMedian:
    """Coordinate-wise median (unweighted): robust to fewer than half the updates being arbitrary."""

    name = "median"

    def __call__(self, deltas: Matrix, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        _check(deltas, weights)
        return np.median(deltas.astype(np.float64), axis=0).astype(np.float32)


class TrimmedMean:
    """Coordinate-wise mean after dropping the ``trim`` fraction of largest and smallest values."""

    name = "trimmed_mean"

    def __init__(self, trim: float = 0.1) -> None:
        if not 0 <= trim < 0.5:
            raise ConfigError(f"trim_fraction must be in [0, 0.5), got {trim}")
        self.trim = trim

    def __call__(self, deltas: Matrix, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        _check(deltas, weights)
        n = len(deltas)
        k = int(np.floor(self.trim * n))
        s = np.sort(deltas.astype(np.float64), axis=0)
        return s[k : n - k].mean(axis=0).astype(np.float32)


class NormBound:
    """Scale each delta down to L2 norm ``bound``, then take the weighted mean."""

    name = "norm_bound"

    def __init__(self, bound: float) -> None:
        if bound <= 0:
            raise ConfigError(f"norm_bound must be positive, got {bound}")
        self.bound = bound

    def __call__(self, deltas: Matrix, weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        _check(deltas, weights)
        d = deltas.astype(np.float64)
        norms = np.linalg.norm(d, axis=1, keepdims=True)
        d = d * np.minimum(1.0, self.bound / np.maximum(norms, 1e-30))
        return Mean()(d.astype(np.float32), weights)


RULES = ("mean", "median", "trimmed_mean", "norm_bound")


def make_rule(spec: AggregationSpec) -> Rule:
    if spec.rule == "mean":
        return Mean()
    if spec.rule == "median":
        return CoordinateMedian()
    if spec.rule == "trimmed_mean":
        return TrimmedMean(spec.trim_fraction)
    if spec.rule == "norm_bound":
        assert spec.norm_bound is not None
        return NormBound(spec.norm_bound)
    raise ConfigError(f'unknown aggregation rule "{spec.rule}"; valid: {", ".join(RULES)}')
