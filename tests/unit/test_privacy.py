"""Privacy math: clipping, seeded Gaussian noise, the dp-accounting epsilon, the ledger and budget."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from streamfed.errors import PrivacyBudgetExceeded
from streamfed.privacy import (
    PrivacyLedger,
    add_gaussian_noise,
    calibrate_noise_multiplier,
    clip_l2,
    clip_segments,
    csprng,
    epsilon_for,
    resolve_noise_multiplier,
)
from streamfed.topology import PrivacySpec

# -- clipping -------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [0.1, 1.0, 3.0])
def test_clip_l2_caps_the_norm_and_keeps_the_direction(clip: float) -> None:
    vec = (np.random.default_rng(1).normal(size=50) * 10).astype(np.float32)
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    out, original = clip_l2(vec, clip)
    assert out.dtype == np.float32
    assert original == pytest.approx(norm)
    assert np.linalg.norm(out.astype(np.float64)) <= clip * (1 + 1e-6)
    assert np.linalg.norm(out.astype(np.float64)) == pytest.approx(clip, rel=1e-5)
    np.testing.assert_allclose(out, vec * (clip / norm), rtol=1e-5)


def test_clip_l2_leaves_a_short_vector_unchanged_and_copies() -> None:
    vec = np.array([0.3, -0.4], dtype=np.float32)
    out, norm = clip_l2(vec, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(out, vec)
    out[0] = 9.0
    assert vec[0] == np.float32(0.3)  # a copy, not the input


def test_clip_l2_zero_vector() -> None:
    out, norm = clip_l2(np.zeros(4, dtype=np.float32), 1.0)
    assert norm == 0.0
    np.testing.assert_array_equal(out, np.zeros(4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_l2_rejects_non_finite(bad: float) -> None:
    vec = np.array([1.0, bad, 2.0], dtype=np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        clip_l2(vec, 1.0)


@pytest.mark.parametrize("clip", [0.0, -1.0])
def test_clip_l2_rejects_a_non_positive_bound(clip: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        clip_l2(np.ones(3, dtype=np.float32), clip)


def test_clip_segments_bounds_each_segment() -> None:
    vec = np.array([3.0, 4.0, 0.0, 6.0, 8.0], dtype=np.float32)
    out, norm = clip_segments(vec, [(0, 2, 1.0), (2, 5, 2.0)])
    assert norm == pytest.approx(float(np.sqrt(125.0)))
    np.testing.assert_allclose(out, [0.6, 0.8, 0.0, 1.2, 1.6], rtol=1e-6)
    with pytest.raises(ValueError, match="cover 2 of 5"):
        clip_segments(vec, [(0, 2, 1.0)])


# -- noise ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("std", [0.5, 2.0])
def test_gaussian_noise_has_the_requested_std_and_zero_mean(std: float) -> None:
    n = 200_000
    vec = np.full(n, 3.0, dtype=np.float32)
    out = add_gaussian_noise(vec, std, np.random.default_rng(7))
    assert out.dtype == np.float32 and out.shape == (n,)
    noise = out.astype(np.float64) - 3.0
    assert abs(noise.std() / std - 1.0) < 0.03
    assert abs(noise.mean()) < 5 * std / np.sqrt(n)


def test_gaussian_noise_same_seed_same_noise() -> None:
    vec = np.zeros(1000, dtype=np.float32)
    a = add_gaussian_noise(vec, 1.0, np.random.default_rng(42))
    b = add_gaussian_noise(vec, 1.0, np.random.default_rng(42))
    c = add_gaussian_noise(vec, 1.0, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_gaussian_noise_does_not_touch_the_global_numpy_state() -> None:
    np.random.seed(1234)
    before = np.random.get_state(legacy=False)
    add_gaussian_noise(np.zeros(10_000, dtype=np.float32), 1.0, np.random.default_rng(0))
    add_gaussian_noise(np.zeros(10, dtype=np.float32), 1.0, csprng())
    after = np.random.get_state(legacy=False)
    assert after["bit_generator"] == before["bit_generator"] == "MT19937"
    np.testing.assert_array_equal(after["state"]["key"], before["state"]["key"])
    assert after["state"]["pos"] == before["state"]["pos"]
    assert (after["has_gauss"], after["gauss"]) == (before["has_gauss"], before["gauss"])


def test_gaussian_noise_zero_std_is_identity_and_negative_is_rejected() -> None:
    vec = np.array([1.5, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(add_gaussian_noise(vec, 0.0, np.random.default_rng(0)), vec)
    with pytest.raises(ValueError, match="non-negative"):
        add_gaussian_noise(vec, -0.1, np.random.default_rng(0))


def test_csprng_gives_different_streams() -> None:
    a, b = csprng(), csprng()
    assert isinstance(a, np.random.Generator)
    assert not np.array_equal(a.integers(0, 2**62, size=8), b.integers(0, 2**62, size=8))


# -- accounting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "k", "delta"), [(1.95, 2, 1e-6), (1.0, 1, 1e-5), (4.0, 10, 1e-6)])
def test_epsilon_for_matches_a_direct_rdp_accountant(sigma: float, k: int, delta: float) -> None:
    acc = rdp.RdpAccountant()
    # one record moves a clipped delta by at most 2C, so the noise multiplier is sigma / 2
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / 2), k))
    assert epsilon_for(sigma, k, delta) == pytest.approx(acc.get_epsilon(delta), rel=1e-12)


def test_epsilon_for_grows_with_releases_and_shrinks_with_noise() -> None:
    assert epsilon_for(2.0, 0, 1e-6) == 0.0
    assert epsilon_for(2.0, 1, 1e-6) < epsilon_for(2.0, 2, 1e-6) < epsilon_for(2.0, 8, 1e-6)
    assert epsilon_for(4.0, 2, 1e-6) < epsilon_for(2.0, 2, 1e-6)


@pytest.mark.parametrize(("eps", "k"), [(8.0, 2), (1.0, 1), (3.0, 5), (0.5, 2)])
def test_calibrated_sigma_spends_at_most_and_close_to_epsilon(eps: float, k: int) -> None:
    sigma = calibrate_noise_multiplier(eps, 1e-6, k)
    spent = epsilon_for(sigma, k, 1e-6)
    assert spent <= eps
    assert spent >= 0.99 * eps


def test_smaller_epsilon_needs_more_noise() -> None:
    sigmas = [calibrate_noise_multiplier(eps, 1e-6, 2) for eps in (8.0, 2.0, 0.5)]
    assert sigmas[0] < sigmas[1] < sigmas[2]


@pytest.mark.parametrize(("sigma", "k"), [(1.95, 2), (9.0, 1), (7.35, 5)])
def test_pld_is_no_looser_than_rdp(sigma: float, k: int) -> None:
    assert epsilon_for(sigma, k, 1e-6, method="pld") <= epsilon_for(sigma, k, 1e-6, method="rdp")


def test_unknown_accounting_method() -> None:
    with pytest.raises(ValueError, match="valid: rdp, pld"):
        epsilon_for(1.0, 1, 1e-6, method="zcdp")


def test_resolve_noise_multiplier() -> None:
    assert resolve_noise_multiplier(PrivacySpec(epsilon=1.0, noise_multiplier=3.0)) == 3.0
    spec = PrivacySpec(epsilon=8.0, delta=1e-6, max_updates_per_record=2)
    assert resolve_noise_multiplier(spec) == pytest.approx(calibrate_noise_multiplier(8.0, 1e-6, 2))


# -- the ledger -----------------------------------------------------------------------------------


def test_ledger_persists_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "site" / "ledger.jsonl"
    ledger = PrivacyLedger(1e-6, path=path)
    assert ledger.spent == 0.0
    s1 = ledger.record(1, 2.0, 1.0, 100)
    s2 = ledger.record(2, 2.0, 1.0, 150)
    s3 = ledger.record(3, 3.0, 1.0, 50)
    assert 0 < s1 < s2 < s3 == ledger.spent
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["sequence"], r["sigma"], r["num_examples"]) for r in lines] == [
        (1, 2.0, 100),
        (2, 2.0, 150),
        (3, 3.0, 50),
    ]

    again = PrivacyLedger(1e-6, path=path)
    assert again.spent == pytest.approx(ledger.spent, rel=1e-12)
    assert again.releases == ledger.releases


def test_ledger_spent_equals_composition_of_its_releases() -> None:
    ledger = PrivacyLedger(1e-5)
    for seq in range(1, 4):
        ledger.record(seq, 2.0, 1.0, 10)
    assert ledger.spent == pytest.approx(epsilon_for(2.0, 3, 1e-5), rel=1e-12)


def test_ledger_without_path_writes_nothing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(1e-6)
    ledger.record(1, 2.0, 1.0, 10)
    assert list(tmp_path.iterdir()) == []
    assert len(ledger.releases) == 1


def test_budget_check_and_remaining() -> None:
    sigma = 2.0
    one = epsilon_for(sigma, 1, 1e-6)
    two = epsilon_for(sigma, 2, 1e-6)
    budget = (one + two) / 2  # room for one release, not for two
    ledger = PrivacyLedger(1e-6, budget_epsilon=budget)
    assert ledger.remaining() == budget
    assert ledger.check(sigma) == pytest.approx(one)
    ledger.record(1, sigma, 1.0, 10)
    assert ledger.remaining() == pytest.approx(budget - one)
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        ledger.check(sigma)
    assert len(ledger.releases) == 1  # check records nothing
    # more noise per release may still fit
    assert ledger.check(50.0) <= budget


def test_remaining_is_none_without_budget_and_never_negative() -> None:
    assert PrivacyLedger(1e-6).remaining() is None
    ledger = PrivacyLedger(1e-6, budget_epsilon=0.01)
    ledger.record(1, 1.0, 1.0, 10)  # record does not enforce; check does
    assert ledger.spent > 0.01
    assert ledger.remaining() == 0.0
