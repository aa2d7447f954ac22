"""Every federated model passes the same checks: its summed clipped per-example gradients equal a
row-by-row autograd reference, each row's contribution is clipped to the bound (one record moves
the sum by at most C), version 0 is the same everywhere, and nothing mutates its inputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from streamfed.learners.federated import FederatedModel, LinearLogistic, WideAndDeep, build_federated_model
from streamfed.learners.federated_torch import TorchWideAndDeep
from streamfed.privacy.mechanisms import l2_norm
from streamfed.topology import load_topology

DIM = 6
FACTORIES: dict[str, Callable[[], FederatedModel]] = {
    "linear": lambda: LinearLogistic(DIM),
    "wide_and_deep": lambda: WideAndDeep(DIM, [5], seed=3),
    "wide_and_deep_two_layers": lambda: WideAndDeep(DIM, [5, 3], seed=3),
    "torch_wide_and_deep": lambda: TorchWideAndDeep(DIM, [5], seed=3, device="cpu"),
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
        z = x @ flat[:DIM] + flat[DIM]
        if not isinstance(model, LinearLogistic):
            z = z + _torch_mlp(flat[DIM + 1 :], x, model)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            z.reshape(()), torch.tensor(float(y[i]), dtype=torch.float64)
        )
        (g,) = torch.autograd.grad(loss, flat)
        rows.append(g.numpy())
    return np.array(rows)


def _torch_mlp(flat: torch.Tensor, x: torch.Tensor, model: FederatedModel) -> torch.Tensor:
    """The MLP of the model's layout, written out in torch (an independent reference)."""
    segs = [s for s in model.layout() if s.name.startswith("deep.")]
    a, i = x, 0
    for k in range(0, len(segs), 2):
        w_shape, b_shape = segs[k].shape, segs[k + 1].shape
        W = flat[i : i + segs[k].size].reshape(w_shape)
        i += segs[k].size
        b = flat[i : i + b_shape[0]]
        i += b_shape[0]
        a = a @ W.T + b
        if k < len(segs) - 2:
            a = torch.relu(a)
    return a.squeeze(-1)


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


def test_numpy_and_torch_wide_and_deep_are_one_model() -> None:
    """Same layout, version 0 and (to float32 precision) logits, norms and clipped sums."""
    a, b = WideAndDeep(DIM, [7, 4], seed=5), TorchWideAndDeep(DIM, [7, 4], seed=5, device="cpu")
    assert [(s.name, s.shape) for s in a.layout()] == [(s.name, s.shape) for s in b.layout()]
    np.testing.assert_array_equal(a.initial_params(), b.initial_params())
    params = _params(a, 7)
    X, y = _data(300, 8)
    np.testing.assert_allclose(a.logits(params, X), b.logits(params, X), rtol=1e-4, atol=1e-5)
    for clip in (0.5, 50.0):
        (ta, na), (tb, nb) = a.clipped_grad_sum(params, X, y, clip), b.clipped_grad_sum(params, X, y, clip)
        np.testing.assert_allclose(na, nb, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ta, tb, rtol=1e-4, atol=1e-4)


def test_the_personal_deep_model_starts_from_version_0s_mlp() -> None:
    from streamfed.learners.torch_mlp import TorchMLPLearner

    fed, personal = WideAndDeep(DIM, [6], seed=9), TorchMLPLearner(DIM, [6], device="cpu", seed=9)
    np.testing.assert_array_equal(fed.initial_params()[DIM + 1 :], personal.get_params())


def test_version_0_is_torchs_seeded_uniform_init_drawn_without_torch() -> None:
    """init_mlp reproduces, bit for bit, the draws of torch's seeded CPU generator it replaced."""
    from streamfed.learners.federated import init_mlp, mlp_layers

    for dim, hidden, seed in ((14, [8], 0), (6, [16, 4], 12345)):
        gen = torch.Generator().manual_seed(seed)
        expected = []
        for _, shape in mlp_layers(dim, hidden):
            bound = 1.0 / np.sqrt(shape[-1]) if len(shape) > 1 else 0.01
            expected.append(((torch.rand(shape, generator=gen) * 2 - 1) * bound).numpy().ravel())
        np.testing.assert_array_equal(init_mlp(dim, hidden, seed), np.concatenate(expected))
