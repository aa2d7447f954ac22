"""Privacy math: clipping, seeded Gaussian noise, the dp-accounting epsilon of each mechanism under
zero-out adjacency, calibration by the tighter of RDP and PLD, the ledger and budget."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from streamfed.errors import PrivacyBudgetExceeded
from streamfed.privacy import (
    Mechanism,
    PrivacyLedger,
    Release,
    add_gaussian_noise,
    calibrate,
    clip_l2,
    csprng,
    epsilon,
    resolve,
    resolve_noise_multiplier,
)
from streamfed.privacy.accountant import RDP_ORDERS, releases_epsilon
from streamfed.topology import PrivacySpec

ZERO_OUT = dp_accounting.NeighboringRelation.REPLACE_SPECIAL

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


def _direct(event: dp_accounting.DpEvent, delta: float, method: str) -> float:
    acc: dp_accounting.PrivacyAccountant
    if method == "rdp":
        acc = rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=ZERO_OUT)
    else:
        acc = pld.PLDAccountant(neighboring_relation=ZERO_OUT, value_discretization_interval=1e-3)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


WINDOW = Mechanism("window_sum", 0.8, 1.0)
DPSGD = Mechanism("dp_sgd", 1.1, 1.0, steps=4, sampling_rate=0.25, releases_per_record=3)


def test_window_sum_is_one_gaussian_release_per_record() -> None:
    # sensitivity C per noised sum (zero-out): noise multiplier sigma, each record in one release
    assert WINDOW.record_event() == dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.8), 1)
    for method in ("rdp", "pld"):
        expected = _direct(dp_accounting.GaussianDpEvent(0.8), 1e-6, method)
        assert epsilon(WINDOW.record_event(), 1e-6, method) == pytest.approx(expected, rel=1e-9)  # type: ignore[arg-type]


def test_dp_sgd_is_k_times_steps_poisson_subsampled_gaussians() -> None:
    step = dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.1))
    assert DPSGD.release_event() == dp_accounting.SelfComposedDpEvent(step, 4)
    event = dp_accounting.SelfComposedDpEvent(step, 12)
    for method in ("rdp", "pld"):
        assert epsilon(DPSGD.record_event(), 1e-6, method) == pytest.approx(  # type: ignore[arg-type]
            _direct(event, 1e-6, method), rel=1e-6
        )


def test_pld_is_no_looser_than_rdp() -> None:
    for mech in (WINDOW, DPSGD):
        assert epsilon(mech.record_event(), 1e-6, "pld") <= epsilon(mech.record_event(), 1e-6, "rdp")


def test_unknown_accounting_method_and_bad_mechanisms() -> None:
    with pytest.raises(ValueError, match="valid: rdp, pld"):
        epsilon(WINDOW.record_event(), 1e-6, "zcdp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid: window_sum, dp_sgd"):
        Mechanism("window_delta", 1.0, 1.0)
    with pytest.raises(ValueError, match="sampling rate"):
        Mechanism("dp_sgd", 1.0, 1.0, sampling_rate=0.0)


@pytest.mark.parametrize("mech", [WINDOW, DPSGD], ids=["window_sum", "dp_sgd"])
@pytest.mark.parametrize("eps", [8.0, 1.0])
def test_calibration_meets_the_target_by_the_tighter_accountant(mech: Mechanism, eps: float) -> None:
    cal = calibrate(mech, eps, 1e-6)
    event = mech.with_sigma(cal.sigma).record_event()
    rdp_eps, pld_eps = _direct(event, 1e-6, "rdp"), _direct(event, 1e-6, "pld")
    assert (cal.epsilon_rdp, cal.epsilon_pld) == (pytest.approx(rdp_eps), pytest.approx(pld_eps))
    assert cal.epsilon == min(rdp_eps, pld_eps) <= eps * (1 + 1e-4)
    assert cal.epsilon >= 0.99 * eps  # not more noise than needed
    assert cal.method == "pld" and pld_eps < rdp_eps  # PLD is the tighter one here, so it sets sigma


def test_smaller_epsilon_needs_more_noise() -> None:
    sigmas = [calibrate(WINDOW, eps, 1e-6).sigma for eps in (8.0, 2.0, 0.5)]
    assert sigmas[0] < sigmas[1] < sigmas[2]


def test_resolve_uses_the_given_noise_multiplier_or_calibrates() -> None:
    mech, cal = resolve(PrivacySpec(epsilon=1.0, noise_multiplier=3.0))
    assert mech.noise_multiplier == cal.sigma == 3.0 and cal.method == "given"
    assert cal.epsilon_rdp == pytest.approx(_direct(dp_accounting.GaussianDpEvent(3.0), 1e-6, "rdp"))
    spec = PrivacySpec(
        epsilon=8.0, delta=1e-6, mechanism="dp_sgd", steps=4, sampling_rate=0.25, max_updates_per_record=3
    )
    mech, cal = resolve(spec)
    assert (mech.kind, mech.steps, mech.sampling_rate, mech.releases_per_record) == ("dp_sgd", 4, 0.25, 3)
    assert resolve_noise_multiplier(spec) == pytest.approx(calibrate(DPSGD, 8.0, 1e-6).sigma)


# -- the ledger -----------------------------------------------------------------------------------


def _rel(seq: int, sigma: float, n: int = 10, **kw: object) -> Release:
    return Release(seq, 0, sigma, 1.0, n, **kw)  # type: ignore[arg-type]


def test_ledger_persists_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "site" / "ledger.jsonl"
    ledger = PrivacyLedger(1e-6, path=path)
    assert ledger.spent == 0.0
    s1 = ledger.record(_rel(1, 2.0, 100))
    s2 = ledger.record(_rel(2, 2.0, 150))
    s3 = ledger.record(_rel(3, 3.0, 50, mechanism="dp_sgd", steps=4, sampling_rate=0.5))
    assert 0 < s1 < s2 < s3 == ledger.spent
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["sequence"], r["sigma"], r["num_examples"], r["mechanism"], r["steps"]) for r in lines] == [
        (1, 2.0, 100, "window_sum", 1),
        (2, 2.0, 150, "window_sum", 1),
        (3, 3.0, 50, "dp_sgd", 4),
    ]
    again = PrivacyLedger(1e-6, path=path)
    assert again.spent == pytest.approx(ledger.spent, rel=1e-12)
    assert again.releases == ledger.releases


def test_ledger_fsyncs_each_line_or_leaves_it_to_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(1e-6, path=path)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    ledger.record(_rel(1, 2.0))
    assert len(synced) == 1  # durable by default
    spent = ledger.record(_rel(2, 2.0), durable=False)
    ledger.record(_rel(3, 2.0), durable=False)
    assert len(synced) == 1 and spent < ledger.spent  # accounted at once, not yet fsynced
    assert [json.loads(line)["sequence"] for line in path.read_text().splitlines()] == [1, 2, 3]
    ledger.sync()
    assert len(synced) == 2  # one fsync covers every line written before it
    PrivacyLedger(1e-6).sync()  # no file: nothing to do


def test_ledger_spent_equals_the_composition_of_its_releases() -> None:
    ledger = PrivacyLedger(1e-5)
    for seq in range(1, 4):
        ledger.record(_rel(seq, 2.0))
    ledger.record(_rel(4, 1.5, mechanism="dp_sgd", steps=3, sampling_rate=0.2))
    gauss = dp_accounting.GaussianDpEvent(2.0)
    sub = dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(1.5))
    event = dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(gauss, 3), dp_accounting.SelfComposedDpEvent(sub, 3)]
    )
    assert ledger.spent == pytest.approx(_direct(event, 1e-5, "rdp"), rel=1e-9)
    assert releases_epsilon(ledger.releases, 1e-5, "pld") == pytest.approx(_direct(event, 1e-5, "pld"), rel=1e-6)


def test_ledger_without_path_writes_nothing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(1e-6)
    ledger.record(_rel(1, 2.0))
    assert list(tmp_path.iterdir()) == []
    assert len(ledger.releases) == 1


def test_budget_check_and_remaining() -> None:
    one = releases_epsilon([_rel(1, 2.0)], 1e-6)
    two = releases_epsilon([_rel(1, 2.0), _rel(2, 2.0)], 1e-6)
    budget = (one + two) / 2  # room for one release, not for two
    ledger = PrivacyLedger(1e-6, budget_epsilon=budget)
    assert ledger.remaining() == budget
    assert ledger.check(_rel(1, 2.0)) == pytest.approx(one)
    ledger.record(_rel(1, 2.0))
    assert ledger.remaining() == pytest.approx(budget - one)
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        ledger.check(_rel(2, 2.0))
    assert len(ledger.releases) == 1  # check records nothing
    assert ledger.check(_rel(2, 50.0)) <= budget  # more noise per release may still fit


def test_remaining_is_none_without_budget_and_never_negative() -> None:
    assert PrivacyLedger(1e-6).remaining() is None
    ledger = PrivacyLedger(1e-6, budget_epsilon=0.01)
    ledger.record(_rel(1, 1.0))  # record does not enforce; check does
    assert ledger.spent > 0.01
    assert ledger.remaining() == 0.0


def test_calibration_is_cached_on_disk_and_a_cached_sigma_is_checked_again(tmp_path: Path, monkeypatch) -> None:
    from streamfed.privacy import accountant

    monkeypatch.setenv("STREAMFED_CACHE_DIR", str(tmp_path))
    spec = PrivacySpec(epsilon=3.0, delta=1e-6)
    accountant._calibrate.cache_clear()
    first = accountant.resolve(spec)[1]
    [cached] = list((tmp_path / "calibration").glob("*.json"))
    doc = json.loads(cached.read_text())
    assert doc["sigma"] == first.sigma and doc["dp_accounting"] != "unknown"
    accountant._calibrate.cache_clear()
    assert accountant.resolve(spec)[1] == first  # from the file: the same sigma, epsilons computed again
    # a cached sigma too small for the target (a stale or edited file) is not used
    cached.write_text(json.dumps({**doc, "sigma": first.sigma / 2}))
    accountant._calibrate.cache_clear()
    again = accountant.resolve(spec)[1]
    assert again == first and again.epsilon <= 3.0
    assert json.loads(cached.read_text())["sigma"] == first.sigma  # and the file is repaired
    # an unwritable cache costs time, never correctness
    monkeypatch.setenv("STREAMFED_CACHE_DIR", "/proc/streamfed-no-such-place")
    accountant._calibrate.cache_clear()
    assert accountant.resolve(spec)[1] == first
    accountant._calibrate.cache_clear()
