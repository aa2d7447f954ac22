"""Every learner passes the same checks: flat float32 parameters that round-trip and are copies,
learning that leaves its input alone and improves on separable data, probabilities in [0, 1].
(The federated models' per-example gradients have their own contract: test_federated_models.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamfed.learners import RiverLogisticLearner
from streamfed.learners.base import Learner
from streamfed.learners.online import MicroBatchLogistic
from streamfed.learners.torch_mlp import TorchMLPLearner


def _river() -> tuple[Learner, int, int]:
    return RiverLogisticLearner([f"x{i}" for i in range(6)], learning_rate=0.1), 6, 1


def _micro_batch() -> tuple[Learner, int, int]:
    return MicroBatchLogistic([f"x{i}" for i in range(6)], learning_rate=0.1, micro_batch=8), 6, 1


def _torch() -> tuple[Learner, int, int]:
    return TorchMLPLearner(6, [8], learning_rate=0.05, device="cpu", seed=3), 6, 40


# name -> (learner, input dim, passes over the data to learn it)
FACTORIES: dict[str, Callable[[], tuple[Learner, int, int]]] = {
    "river_logistic": _river,
    "numpy_micro_batch": _micro_batch,
    "torch_mlp": _torch,
}


def _learners(**marks: pytest.MarkDecorator) -> list[Any]:
    return [pytest.param(name, marks=marks[name]) if name in marks else name for name in FACTORIES]


def _data(dim: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable rows with a margin: y = 1 where w.x > 0."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(100).normal(size=dim)
    X = rng.normal(size=(4 * n, dim))
    score = X @ w / np.linalg.norm(w)
    keep = np.abs(score) > 0.3
    X, score = X[keep][:n], score[keep][:n]
    return X.astype(np.float32), (score > 0).astype(np.float32)


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _build(name: str) -> tuple[Learner, int, int]:
    return FACTORIES[name]()


@pytest.mark.parametrize("name", _learners())
def test_is_a_learner(name: str) -> None:
    learner, _, _ = _build(name)
    assert isinstance(learner, Learner)
    names = [s.name for s in learner.layout()]
    assert len(names) == len(set(names))
    assert all(s.size > 0 for s in learner.layout())


@pytest.mark.parametrize("name", _learners())
def test_get_params_is_flat_float32_of_the_layout_size(name: str) -> None:
    learner, _, _ = _build(name)
    params = learner.get_params()
    assert params.dtype == np.float32
    assert params.shape == (sum(s.size for s in learner.layout()),)
    assert np.isfinite(params).all()


@pytest.mark.parametrize("name", _learners())
def test_set_params_round_trips_exactly(name: str) -> None:
    learner, _, _ = _build(name)
    n = learner.get_params().size
    params = np.random.default_rng(1).normal(size=n).astype(np.float32)
    learner.set_params(params.copy())
    np.testing.assert_array_equal(learner.get_params(), params)
    learner.set_params(learner.get_params())
    np.testing.assert_array_equal(learner.get_params(), params)


@pytest.mark.parametrize("name", _learners())
def test_set_params_changes_predictions(name: str) -> None:
    learner, dim, _ = _build(name)
    X, _ = _data(dim, 50, seed=2)
    before = learner.predict_proba_many(X)
    learner.set_params(np.random.default_rng(2).normal(size=learner.get_params().size).astype(np.float32))
    assert not np.allclose(learner.predict_proba_many(X), before)


@pytest.mark.parametrize("name", _learners())
def test_get_params_returns_a_copy(name: str) -> None:
    learner, _, _ = _build(name)
    params = learner.get_params()
    kept = params.copy()
    params[:] = 123.0
    np.testing.assert_array_equal(learner.get_params(), kept)


@pytest.mark.parametrize("name", _learners())
def test_set_params_copies_its_input(name: str) -> None:
    learner, _, _ = _build(name)
    params = np.random.default_rng(4).normal(size=learner.get_params().size).astype(np.float32)
    kept = params.copy()
    learner.set_params(params)
    params[:] = 0.0  # the caller reuses its buffer
    np.testing.assert_array_equal(learner.get_params(), kept)


@pytest.mark.parametrize("name", _learners())
def test_learning_does_not_write_into_the_array_given_to_set_params(name: str) -> None:
    """A caller may keep the array it hands to set_params (an earlier version of the site did)."""
    learner, dim, _ = _build(name)
    base = learner.get_params()
    kept = base.copy()
    learner.set_params(base)
    X, y = _data(dim, 200, seed=5)
    for _ in range(3):
        learner.learn_many(X, y)
    assert not np.array_equal(learner.get_params(), kept)  # it did learn
    np.testing.assert_array_equal(base, kept)


@pytest.mark.parametrize("name", _learners())
def test_learn_many_does_not_mutate_its_input(name: str) -> None:
    learner, dim, _ = _build(name)
    X, y = _data(dim, 300, seed=6)
    X[::7, 0] = 0.0  # zeros are skipped by river's sparse dicts: they must stay zeros
    X_copy, y_copy = X.copy(), y.copy()
    learner.learn_many(X, y)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)
    assert X.flags.writeable and y.flags.writeable


@pytest.mark.parametrize("name", _learners())
def test_predict_does_not_learn(name: str) -> None:
    learner, dim, _ = _build(name)
    X, _ = _data(dim, 100, seed=7)
    before = learner.get_params()
    learner.predict_proba_many(X)
    np.testing.assert_array_equal(learner.get_params(), before)


@pytest.mark.parametrize("name", _learners())
def test_learning_separable_data_improves_loss_and_accuracy(name: str) -> None:
    learner, dim, passes = _build(name)
    X, y = _data(dim, 600, seed=8)
    X_test, y_test = _data(dim, 400, seed=9)
    p0 = learner.predict_proba_many(X_test)
    for _ in range(passes):
        learner.learn_many(X, y)
    p1 = learner.predict_proba_many(X_test)
    assert _log_loss(p1, y_test) < 0.8 * _log_loss(p0, y_test)
    accuracy = float(np.mean((p1 > 0.5) == (y_test == 1.0)))
    assert accuracy > 0.9
    assert accuracy > float(np.mean((p0 > 0.5) == (y_test == 1.0)))


@pytest.mark.parametrize("name", _learners())
@pytest.mark.parametrize("n", [0, 1, 257])
def test_predict_proba_many_gives_probabilities(name: str, n: int) -> None:
    learner, dim, _ = _build(name)
    learner.set_params(np.random.default_rng(10).normal(0, 3, size=learner.get_params().size).astype(np.float32))
    X = (np.random.default_rng(11).normal(0, 10, size=(n, dim))).astype(np.float32)
    p = learner.predict_proba_many(X)
    assert p.shape == (n,)
    assert p.dtype == np.float32
    assert ((p >= 0.0) & (p <= 1.0)).all()


@pytest.mark.parametrize("name", _learners())
@pytest.mark.parametrize("change", [-1, 1])
def test_set_params_with_the_wrong_size_raises_value_error(name: str, change: int) -> None:
    learner, _, _ = _build(name)
    before = learner.get_params()
    with pytest.raises(ValueError):
        learner.set_params(np.zeros(before.size + change, dtype=np.float32))
    np.testing.assert_array_equal(learner.get_params(), before)


def _stream(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X[X < -0.8] = 0.0  # sparse rows: river's L2 touches only the features a row has
    y = (rng.random(n) < 0.3).astype(np.float32)
    y[::5] = np.nan  # unlabelled rows are scored, never learnt
    return X, y


@pytest.mark.parametrize("l2", [0.0, 0.02])
def test_micro_batches_approach_rivers_learn_one_as_the_step_shrinks(l2: float) -> None:
    """At a small learning rate, one implicit step on m rows is m of river's steps, to first order."""
    X, y = _stream()
    river = RiverLogisticLearner([f"x{i}" for i in range(6)], 0.002, l2)
    numpy_ = MicroBatchLogistic([f"x{i}" for i in range(6)], 0.002, l2, micro_batch=4)
    p_river, p_numpy = river.prequential_many(X, y), numpy_.prequential_many(X, y)
    moved = np.abs(river.get_params()).max()
    assert moved > 0.05
    np.testing.assert_allclose(numpy_.get_params(), river.get_params(), atol=0.02 * moved)
    np.testing.assert_allclose(p_numpy, p_river, atol=5e-3)  # scored up to 3 rows staler


def test_a_micro_batch_step_is_the_linearised_implicit_step() -> None:
    X, y = _stream(24)
    y = np.nan_to_num(y, nan=1.0)
    lr, l2 = 0.3, 0.05
    learner = MicroBatchLogistic([f"x{i}" for i in range(6)], lr, l2, micro_batch=24)
    start = np.random.default_rng(2).normal(size=7).astype(np.float32)
    learner.set_params(start)
    learner.prequential_many(X, y)
    theta = start.astype(np.float64)
    Xt = np.hstack([X.astype(np.float64), np.ones((24, 1))])
    p = 1 / (1 + np.exp(-(Xt @ theta)))
    reg = l2 * np.append((X != 0).sum(axis=0), 0.0)
    g = (p - y) @ Xt + reg * theta
    H = Xt.T @ (Xt * (p * (1 - p))[:, None]) + np.diag(reg)
    expected = theta - np.linalg.solve(np.eye(7) + lr * H, lr * g)
    np.testing.assert_allclose(learner.get_params(), expected, rtol=1e-5, atol=1e-6)


def test_micro_batches_do_not_depend_on_how_calls_split_the_stream() -> None:
    X, y = _stream()
    whole = MicroBatchLogistic([f"x{i}" for i in range(6)], 0.05, 0.01, micro_batch=16)
    split = MicroBatchLogistic([f"x{i}" for i in range(6)], 0.05, 0.01, micro_batch=16)
    p_whole = whole.prequential_many(X, y)
    p_split = np.concatenate([split.prequential_many(X[a : a + 7], y[a : a + 7]) for a in range(0, len(y), 7)])
    np.testing.assert_array_equal(p_split, p_whole)
    np.testing.assert_array_equal(split.get_params(), whole.get_params())


def test_a_micro_batch_is_scored_before_any_of_its_rows_is_learnt() -> None:
    X, _ = _stream(64)
    learner = MicroBatchLogistic([f"x{i}" for i in range(6)], 0.5, micro_batch=32)
    p = learner.prequential_many(X, np.ones(64, dtype=np.float32))
    assert np.all(p[:32] == np.float32(0.5))  # the first 32 rows: the weights as they began
    assert np.all(p[32:] != np.float32(0.5))  # then one step on all 32
