"""The Gaussian mechanism on a clipped vector, as small pure functions with the generator injected."""

from __future__ import annotations

import math
import secrets

import numpy as np
import numpy.typing as npt

Vec = npt.NDArray[np.float32]


def csprng() -> np.random.Generator:
    """A PCG64 generator seeded with 256 bits from the operating system's CSPRNG (``secrets``)."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(256)))


def l2_norm(vec: npt.ArrayLike) -> float:
    """The L2 norm in float64, in one pass of numpy's own loop (no BLAS).

    ``np.linalg.norm`` of a vector is a BLAS dot; on a busy machine a multi-threaded BLAS took ~8 ms
    for 1e5 values instead of ~15 us (benchmarks/README.md), on the site's and the aggregator's paths.

    >>> l2_norm(np.array([3.0, 4.0], dtype=np.float32))
    5.0
    """
    v = np.asarray(vec, dtype=np.float64).reshape(-1)
    return math.sqrt(float(np.einsum("i,i->", v, v)))


def clip_l2(vec: Vec, clip_norm: float) -> tuple[Vec, float]:
    """Scale ``vec`` down so its L2 norm is at most ``clip_norm``; returns (clipped copy, original norm).

    >>> v, n = clip_l2(np.array([3.0, 4.0], dtype=np.float32), 1.0)
    >>> round(float(np.linalg.norm(v)), 6), n
    (1.0, 5.0)
    """
    if clip_norm <= 0:
        raise ValueError("clip_norm must be positive")
    norm = l2_norm(vec)
    if not np.isfinite(norm):
        raise ValueError("cannot clip a vector with non-finite values")
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return (vec * np.float32(factor)).astype(np.float32), norm


def add_gaussian_noise(vec: Vec, std: float, rng: np.random.Generator) -> Vec:
    """``vec + N(0, std^2 I)`` drawn from ``rng`` (never the global numpy state)."""
    if std < 0:
        raise ValueError("noise std must be non-negative")
    noise = rng.normal(0.0, std, size=vec.shape)
    return (vec.astype(np.float64) + noise).astype(np.float32)
