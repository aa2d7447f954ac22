"""The served blend on synthetic streams: never worse than either of its parts beyond a stated margin
(AUC 0.01 over 20,000 records; log loss at most ln(1 / prior) above any expert's, exactly), whether
the first part is better, the second (well ranked but miscalibrated, as a global model at a site with
its own base rate), both carry independent information, or the better one changes."""

from __future__ import annotations

import numpy as np
import pytest

from streamfed.site.served import Blend, ExpertMixture, RollingAUC
from streamfed.topology.spec import BlendSpec

N = 20_000
AUC_MARGIN = 0.01


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    w = RollingAUC(len(y))
    w.update(y, p)
    got = w.get_auc()
    assert got is not None
    return got


def _stream(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1.5, N)
    y = (rng.random(N) < 1 / (1 + np.exp(-truth))).astype(np.float64)
    noise_a, noise_b = rng.normal(0, 1, N), rng.normal(0, 1, N)
    if kind == "first_better":
        return y, truth + 0.5 * noise_a, truth + 2.0 * noise_b
    if kind == "second_better_but_miscalibrated":  # ranks well, wrong scale and base rate
        return y, truth + 2.0 * noise_a, 0.3 * (truth + 0.5 * noise_b) - 2.0
    if kind == "complementary":
        return y, truth + 1.0 * noise_a, truth + 1.0 * noise_b
    if kind == "switch":  # the first is better, then the second
        half = N // 2
        a = np.where(np.arange(N) < half, truth + 0.3 * noise_a, truth + 3.0 * noise_a)
        b = np.where(np.arange(N) < half, truth + 3.0 * noise_b, truth + 0.3 * noise_b)
        return y, a, b
    raise ValueError(kind)


def _serve(y: np.ndarray, z1: np.ndarray, z2: np.ndarray, batch: int = 50) -> np.ndarray:
    blend = Blend(BlendSpec())
    out = np.empty(N)
    for a in range(0, N, batch):
        out[a : a + batch] = blend.step(z1[a : a + batch], z2[a : a + batch], y[a : a + batch])
    return out


@pytest.mark.parametrize("kind", ["first_better", "second_better_but_miscalibrated", "complementary", "switch"])
def test_the_served_blend_is_never_worse_than_either_part(kind: str) -> None:
    y, z1, z2 = _stream(kind)
    served = _serve(y, z1, z2)
    parts = {"first": _auc(y, z1), "second": _auc(y, z2)}
    got = _auc(y, served)
    assert got >= max(parts.values()) - AUC_MARGIN, (got, parts)
    if kind == "complementary":
        assert got > max(parts.values()) + 0.01  # two independent views beat each alone


def test_the_mixture_log_loss_is_within_ln_experts_of_the_best_expert() -> None:
    """Exponential weights with learning rate 1 on log loss, no discount: regret <= ln(experts)."""
    y, z1, z2 = _stream("complementary", seed=3)
    mix = ExpertMixture(BlendSpec(half_life=10**15))
    p = np.empty(N)
    for a in range(0, N):
        p[a : a + 1] = mix.predict(z1[a : a + 1], z2[a : a + 1])
        mix.learn(z1[a : a + 1], z2[a : a + 1], y[a : a + 1])
    q = np.clip(p, 1e-12, 1 - 1e-12)
    mixture_loss = float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).sum())
    prior = np.exp(-mix.initial_loss)
    assert prior[0] == pytest.approx(BlendSpec().prior_first) and prior.sum() == pytest.approx(1.0)
    # regret to each expert k is at most ln(1 / prior_k): to the first model, ln(1 / prior_first)
    cumulative = mix.loss - mix.initial_loss
    assert (mixture_loss <= cumulative + np.log(1 / prior) + 1e-6).all()


def test_the_blend_learns_only_labelled_rows() -> None:
    blend = Blend(BlendSpec())
    y = np.array([np.nan, 1.0, np.nan, 0.0])
    out = blend.step(np.array([1.0, 2.0, 3.0, -1.0]), np.zeros(4), y)
    assert out.shape == (4,) and blend.mix.seen == 2
