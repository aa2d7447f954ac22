"""Every privacy mechanism passes the same checks: one record moves a noised sum by at most C before
noise (zero-out adjacency), the noise has the declared scale, and every epsilon the platform prints
is dp-accounting's for the exact event composed."""

from __future__ import annotations

import json
import re

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from typer.testing import CliRunner

from streamfed.cli.main import app
from streamfed.learners.federated import LinearLogistic, WideAndDeep
from streamfed.privacy.accountant import RDP_ORDERS, Mechanism
from streamfed.privacy.mechanisms import l2_norm
from streamfed.site.contribution import FederatedContribution

DIM = 5
ZERO_OUT = dp_accounting.NeighboringRelation.REPLACE_SPECIAL
MECHANISMS = {
    "window_sum": Mechanism("window_sum", 0.7, 1.0),
    "dp_sgd": Mechanism("dp_sgd", 1.2, 1.0, steps=3, sampling_rate=0.3, releases_per_record=2),
    "dp_sgd_full_batch": Mechanism("dp_sgd", 1.2, 1.0, steps=1, sampling_rate=1.0, releases_per_record=1),
}
MODELS = {"linear": lambda: LinearLogistic(DIM), "wide_and_deep": lambda: WideAndDeep(DIM, [4], 1)}


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, DIM)).astype(np.float32), (rng.random(n) < 0.5).astype(np.float32)


def _release(model_name: str, mech: Mechanism, X: np.ndarray, y: np.ndarray, seed: int, lr: float = 0.5):
    contrib = FederatedContribution(
        MODELS[model_name](), mech, window=len(y), learning_rate=lr, rng=np.random.default_rng(seed)
    )
    contrib.add(X, y)
    out = contrib.release()
    assert out is not None and out.num_examples == len(y)
    return out


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("mech_name", ["window_sum", "dp_sgd_full_batch"])
def test_a_huge_record_moves_the_noised_sum_by_at_most_c(model_name: str, mech_name: str) -> None:
    """Same noise draws with and without the record: the released sums differ by the clipped gradient."""
    mech = MECHANISMS[mech_name]
    X, y = _data(40, 1)
    huge = np.full((1, DIM), 1e5, dtype=np.float32)
    wrong = np.float32(MODELS[model_name]().logits(MODELS[model_name]().initial_params(), huge)[0] < 0)
    lr = 0.5
    with_rec = _release(model_name, mech, np.vstack([X, huge]), np.append(y, wrong).astype(np.float32), seed=7, lr=lr)
    without = _release(model_name, mech, X, y, seed=7, lr=lr)
    # each release is -lr (sum + noise) / n: undo the normalisation of each
    s_with = with_rec.delta.astype(np.float64) * with_rec.num_examples / lr
    s_without = without.delta.astype(np.float64) * without.num_examples / lr
    assert l2_norm(s_with - s_without) <= mech.clip_norm * (1 + 1e-4)
    assert with_rec.grad_norm > without.grad_norm  # the huge record was there, and it was clipped


@pytest.mark.parametrize("mech_name", list(MECHANISMS))
def test_noise_has_the_declared_scale(mech_name: str) -> None:
    """Across seeds, each coordinate of a release varies as lr sigma C sqrt(steps) / (q n)."""
    mech = MECHANISMS[mech_name]
    X, y = _data(30, 2)
    X[:] = 0.0  # gradients at zero features: only the intercept moves, the rest is noise alone
    lr, n = 0.5, 30
    deltas = np.array([_release("linear", mech, X, y, seed=s, lr=lr).delta[:-1] for s in range(600)])
    expected = lr * mech.noise_std * np.sqrt(mech.steps) / (mech.sampling_rate * n)
    assert deltas.std(axis=0).mean() == pytest.approx(expected, rel=0.06)
    assert abs(deltas.mean()) < 4 * expected / np.sqrt(deltas.size)


def test_window_sum_records_are_in_exactly_one_release_and_windows_are_exact() -> None:
    mech = MECHANISMS["window_sum"]
    contrib = FederatedContribution(
        LinearLogistic(DIM), mech, window=10, learning_rate=1.0, rng=np.random.default_rng(0)
    )
    X, y = _data(25, 3)
    contrib.add(X[:7], y[:7])
    contrib.add(X[7:], y[7:])  # windows are cut by position, whatever the batches
    assert contrib.has_full_window and contrib.pending_examples == 25
    first = contrib.release()  # the oldest full window
    assert first is not None and first.num_examples == 10 and contrib.pending_examples == 15
    assert contrib.release() is not None and contrib.release() is None  # the 5 left wait for their window
    rest = contrib.release(close_current=True)
    assert rest is not None and rest.num_examples == 5 and contrib.pending_examples == 0


def test_dp_sgd_keeps_a_window_pooled_for_k_releases() -> None:
    mech = MECHANISMS["dp_sgd"]  # k = 2
    contrib = FederatedContribution(
        LinearLogistic(DIM), mech, window=10, learning_rate=1.0, rng=np.random.default_rng(0)
    )
    X, y = _data(30, 4)
    contrib.add(X, y)
    for _ in range(3):
        assert contrib.release() is not None
        assert len(contrib.pool) <= mech.releases_per_record


def _direct(event: dp_accounting.DpEvent, delta: float, method: str) -> float:
    acc = (
        rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=ZERO_OUT)
        if method == "rdp"
        else pld.PLDAccountant(neighboring_relation=ZERO_OUT, value_discretization_interval=1e-3)
    )
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(
    ("overrides", "event_of"),
    [
        ([], lambda z: dp_accounting.GaussianDpEvent(z)),
        (
            [
                "privacy.mechanism=dp_sgd",
                "privacy.steps=3",
                "privacy.sampling_rate=0.2",
                "privacy.max_updates_per_record=2",
            ],
            lambda z: dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(z)), 6
            ),
        ),
    ],
    ids=["window_sum", "dp_sgd"],
)
def test_validate_prints_dp_accountings_epsilon_for_the_exact_event(tmp_path, overrides, event_of) -> None:
    import yaml

    from streamfed.topology import load_topology

    doc = json.loads(load_topology("bank").model_dump_json())
    for item in overrides:
        key, value = item.split("=")
        section, field = key.split(".")
        doc[section][field] = yaml.safe_load(value)
    for s in doc["sites"]:
        s["source"]["path"] = str(load_topology("bank").site(s["id"]).source.path)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["topology", "validate", str(path)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("# privacy:"))
    sigma = float(re.search(r"sigma = ([0-9.]+)", line).group(1))
    eps_rdp = float(re.search(r"RDP ([0-9.]+)", line).group(1))
    eps_pld = float(re.search(r"PLD ([0-9.]+)", line).group(1))
    delta = doc["privacy"]["delta"]
    assert eps_rdp == pytest.approx(_direct(event_of(sigma), delta, "rdp"), abs=2e-3)
    assert eps_pld == pytest.approx(_direct(event_of(sigma), delta, "pld"), abs=2e-3)
    assert min(eps_rdp, eps_pld) <= doc["privacy"]["epsilon"] + 1e-3
    assert "zero-out" in line
