"""Every aggregation rule passes the same checks: identical deltas give that delta, the order of
the buffer does not matter, float32 out; and the robust rules resist one huge outlier."""

from __future__ import annotations

import numpy as np
import pytest

from streamfed.aggregation.rules import CoordinateMedian, Mean, NormBound, Rule, TrimmedMean

RULES: dict[str, Rule] = {
    "mean": Mean(),
    "median": CoordinateMedian(),
    "trimmed_mean": TrimmedMean(0.2),
    "norm_bound": NormBound(1e6),
}


@pytest.fixture(params=sorted(RULES))
def rule(request: pytest.FixtureRequest) -> Rule:
    return RULES[request.param]


def _buffer(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.uniform(1, 100, size=n)


def test_names_are_the_topology_choices() -> None:
    assert sorted(r.name for r in RULES.values()) == ["mean", "median", "norm_bound", "trimmed_mean"]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_identical_deltas_give_that_delta(rule: Rule, n: int) -> None:
    delta = np.random.default_rng(0).normal(size=33).astype(np.float32)
    weights = np.random.default_rng(1).uniform(1, 50, size=n)
    out = rule(np.tile(delta, (n, 1)), weights)
    np.testing.assert_allclose(out, delta, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_order_of_the_buffer_does_not_matter(rule: Rule, seed: int) -> None:
    deltas, weights = _buffer(7, 20, seed)
    perm = np.random.default_rng(seed + 100).permutation(7)
    np.testing.assert_allclose(rule(deltas[perm], weights[perm]), rule(deltas, weights), rtol=1e-6, atol=1e-7)


def test_output_is_float32_of_one_row(rule: Rule) -> None:
    deltas, weights = _buffer(5, 11, 3)
    out = rule(deltas, weights)
    assert out.dtype == np.float32
    assert out.shape == (11,)
    assert np.isfinite(out).all()


def test_inputs_are_not_modified(rule: Rule) -> None:
    deltas, weights = _buffer(5, 11, 4)
    d0, w0 = deltas.copy(), weights.copy()
    rule(deltas, weights)
    np.testing.assert_array_equal(deltas, d0)
    np.testing.assert_array_equal(weights, w0)


@pytest.mark.parametrize(
    ("deltas", "weights"),
    [
        (np.zeros((0, 3), np.float32), np.zeros(0)),
        (np.zeros(3, np.float32), np.ones(1)),
        (np.zeros((2, 3), np.float32), np.ones(3)),
        (np.zeros((2, 3), np.float32), np.array([1.0, -1.0])),
        (np.zeros((2, 3), np.float32), np.zeros(2)),
    ],
    ids=["empty", "1d", "weights-count", "negative-weight", "zero-weights"],
)
def test_bad_buffers_are_rejected(rule: Rule, deltas: np.ndarray, weights: np.ndarray) -> None:
    with pytest.raises(ValueError):
        rule(deltas, weights)


def _honest_and_outlier(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    center = rng.normal(size=16)
    honest = center + 0.05 * rng.normal(size=(4, 16))
    outlier = 1e4 * np.ones((1, 16))
    deltas = np.vstack([honest[:2], outlier, honest[2:]]).astype(np.float32)
    return deltas, np.ones(5), honest


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_robust_rules_ignore_one_huge_outlier_among_five(name: str, seed: int) -> None:
    deltas, weights, honest = _honest_and_outlier(seed)
    out = RULES[name](deltas, weights)
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    assert ((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()  # inside the honest range, coordinate-wise
    assert np.abs(out - honest.mean(axis=0)).max() < 0.2


@pytest.mark.parametrize("name", ["mean", "norm_bound"])
def test_the_mean_follows_the_outlier(name: str) -> None:
    deltas, weights, honest = _honest_and_outlier(0)
    out = RULES[name](deltas, weights)
    assert np.abs(out - honest.mean(axis=0)).min() > 1000  # 1e4 / 5 away in every coordinate


def test_mean_is_weighted() -> None:
    deltas = np.array([[0.0, 10.0], [4.0, 2.0]], dtype=np.float32)
    assert Mean()(deltas, np.array([3.0, 1.0])).tolist() == [1.0, 8.0]


def test_median_and_trimmed_mean_ignore_weights() -> None:
    deltas = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]], dtype=np.float32)
    heavy_outlier = np.array([1.0, 1.0, 1.0, 1.0, 1000.0])
    assert CoordinateMedian()(deltas, heavy_outlier).tolist() == [2.0]
    assert TrimmedMean(0.2)(deltas, heavy_outlier).tolist() == [2.0]  # mean of 1, 2, 3


def test_trimmed_mean_trims_floor_of_fraction_times_n_at_each_end() -> None:
    deltas = np.array([[-50.0], [1.0], [2.0], [6.0], [9.0], [70.0]], dtype=np.float32)
    ones = np.ones(6)
    assert TrimmedMean(0.0)(deltas, ones)[0] == pytest.approx(38.0 / 6)
    assert TrimmedMean(0.1)(deltas, ones)[0] == pytest.approx(38.0 / 6)  # floor(0.6) = 0
    assert TrimmedMean(0.2)(deltas, ones)[0] == pytest.approx(18.0 / 4)  # floor(1.2) = 1


@pytest.mark.parametrize("bound", [0.5, 2.0])
def test_norm_bound_caps_each_rows_norm(bound: float) -> None:
    rng = np.random.default_rng(5)
    direction = rng.normal(size=10)
    direction /= np.linalg.norm(direction)
    deltas = np.vstack([direction * 10.0, direction * 100.0, -direction * 1000.0]).astype(np.float32)
    out = NormBound(bound)(deltas, np.array([1.0, 1.0, 1.0]))
    # each row is scaled to norm `bound`: two along +direction, one along -direction
    np.testing.assert_allclose(out, direction * bound / 3, rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(out) <= bound


def test_norm_bound_leaves_short_rows_alone() -> None:
    deltas, weights = _buffer(4, 8, 6)
    big_bound = 10 * float(np.linalg.norm(deltas, axis=1).max())
    np.testing.assert_allclose(NormBound(big_bound)(deltas, weights), Mean()(deltas, weights), rtol=1e-6)
    # a bound between the norms changes only the long rows
    deltas[0] *= 100
    mid = float(np.linalg.norm(deltas[1:], axis=1).max()) * 2
    expected = deltas.astype(np.float64).copy()
    expected[0] *= mid / np.linalg.norm(expected[0])
    np.testing.assert_allclose(NormBound(mid)(deltas, weights), Mean()(expected.astype(np.float32), weights), rtol=1e-5)
