"""Every federated model passes the same checks: its summed clipped per-example gradients equal a
row-by-row autograd reference, each row's contribution is clipped to the bound (one record moves
the sum by at most C), version 0 is the same everywhere, and nothing mutates its inputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from streamfed.learners.federated import FederatedModel, LinearLogistic, WideAndDeep, build_federated_model
from streamfed.privacy.mechanisms import l2_norm
from streamfed.topology import load_topology

DIM = 6
FACTORIES: dict[str, Callable[[], FederatedModel]] = {
    "linear": lambda: LinearLogistic(DIM),
    "wide_and_deep": lambda: WideAndDeep(DIM, [5], seed=3, device="cpu"),
}


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 2, size=(n, DIM)).astype(np.float32)
    return X, (rng.random(n) < 0.4).astype(np.float32)


def _params(model: FederatedModel, seed: int) -> np.ndarray:
    p = model.initial_params()
    return (p + np.random.default_rng(seed).normal(0, 0.5, size=p.size)).astype(np.float32)


def _reference(model: FederatedModel, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's log-loss gradient by autograd through the model's logits, one row at a time."""
    rows = []
    for i in range(len(y)):
        flat = torch.tensor(params, dtype=torch.float64, requires_grad=True)
        x = torch.tensor(X[i : i + 1], dtype=torch.float64)
        if isinstance(model, LinearLogistic):
            z = x @ flat[:-1] + flat[-1]
        else:
            z = model._logit(flat.float(), x.float()).double()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            z.reshape(()), torch.tensor(float(y[i]), dtype=torch.float64)
        )
        (g,) = torch.autograd.grad(loss, flat)
        rows.append(g.numpy())
    return np.array(rows)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_layout_covers_the_parameters_and_version_0_is_shared(name: str) -> None:
    a, b = FACTORIES[name](), FACTORIES[name]()
    assert sum(s.size for s in a.layout()) == a.num_params == a.initial_params().size
    assert [s.name for s in a.layout()][:2] == ["linear.weights", "linear.intercept"]
    np.testing.assert_array_equal(a.initial_params(), b.initial_params())
    assert a.initial_params().dtype == np.float32


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("clip", [0.3, 1.0, 100.0])
def test_clipped_sum_equals_the_row_by_row_reference(name: str, clip: float) -> None:
    model = FACTORIES[name]()
    params = _params(model, 1)
    X, y = _data(40, 2)
    G = _reference(model, params, X, y)
    norms = np.linalg.norm(G, axis=1)
    expected = (G * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0)
    total, got_norms = model.clipped_grad_sum(params, X, y, clip)
    np.testing.assert_allclose(got_norms, norms, rtol=1e-4)
    np.testing.assert_allclose(total, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_one_record_moves_the_clipped_sum_by_at_most_the_clip_norm(name: str) -> None:
    model = FACTORIES[name]()
    params = _params(model, 3)
    X, y = _data(30, 4)
    base, _ = model.clipped_grad_sum(params, X, y, 1.0)
    huge = np.full((1, DIM), 1e4, dtype=np.float32)  # a record with an enormous gradient:
    wrong = np.float32(model.logits(params, huge)[0] < 0)  # its label is the one the model gets wrong
    with_it, norms = model.clipped_grad_sum(params, np.vstack([X, huge]), np.append(y, wrong).astype(np.float32), 1.0)
    assert norms[-1] > 1e3
    assert l2_norm(with_it - base) <= 1.0 + 1e-5


@pytest.mark.parametrize("name", list(FACTORIES))
def test_logits_and_gradients_leave_their_inputs_alone(name: str) -> None:
    model = FACTORIES[name]()
    params = _params(model, 5)
    X, y = _data(25, 6)
    kept = (params.copy(), X.copy(), y.copy())
    z = model.logits(params, X)
    model.clipped_grad_sum(params, X, y, 1.0)
    assert z.shape == (25,) and np.isfinite(z).all()
    for a, b in zip((params, X, y), kept, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_an_empty_batch_sums_to_zero(name: str) -> None:
    model = FACTORIES[name]()
    total, norms = model.clipped_grad_sum(
        model.initial_params(), np.zeros((0, DIM), np.float32), np.zeros(0, np.float32), 1.0
    )
    assert total.shape == (model.num_params,) and not total.any() and norms.size == 0


def test_the_topology_chooses_the_model() -> None:
    fraud, bank = load_topology("fraud").model, load_topology("bank").model
    assert isinstance(build_federated_model(fraud, "cpu"), WideAndDeep)
    lin = build_federated_model(bank, "cpu")
    assert isinstance(lin, LinearLogistic) and lin.num_params == len(bank.features.names()) + 1
