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
from streamfed.learners.torch_mlp import TorchMLPLearner


def _river() -> tuple[Learner, int, int]:
    return RiverLogisticLearner([f"x{i}" for i in range(6)], learning_rate=0.1), 6, 1


def _torch() -> tuple[Learner, int, int]:
    return TorchMLPLearner(6, [8], learning_rate=0.05, device="cpu", seed=3), 6, 40


# name -> (learner, input dim, passes over the data to learn it)
FACTORIES: dict[str, Callable[[], tuple[Learner, int, int]]] = {
    "river_logistic": _river,
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
