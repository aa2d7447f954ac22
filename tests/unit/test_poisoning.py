"""One malicious site among four: robust rules keep the global model, the plain mean does not.

The federation runs in process (real site learners, the aggregator's real verification and FedBuff)
with the privacy noise turned down, so the comparison measures the rules rather than the noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamfed.sources.simulator import TransactionSimulator
from streamfed.testing.federation import FederationResult, run_federation
from streamfed.topology import SimulatorSpec, load_topology

HONEST = ["bank-a", "bank-b", "bank-c"]
ATTACKER = "mallory"


def _topology(tmp_path: Path, rule: str):
    sites = [{"id": s} for s in [*HONEST, ATTACKER]]
    return load_topology(
        "fraud",
        {
            "name": "poison",
            "state_dir": str(tmp_path / rule),
            "sites": sites,
            "model": {"deep": {"enabled": False}},
            "privacy": {"noise_multiplier": 0.001},
            "update": {"every_records": 500, "min_records": 100},
            "aggregation": {"rule": rule, "buffer_size": 4, "trim_fraction": 0.25, "max_update_norm": 100.0},
        },
    )


def _streams(n_batches: int = 30, batch: int = 500) -> dict:
    specs = {
        "bank-a": SimulatorSpec(fraud_rate=0.02, seed=1),
        "bank-b": SimulatorSpec(fraud_rate=0.04, online_share=0.5, seed=2),
        "bank-c": SimulatorSpec(fraud_rate=0.06, night_share=0.2, seed=3),
        ATTACKER: SimulatorSpec(fraud_rate=0.03, seed=4),
    }

    def gen(sid: str, spec: SimulatorSpec):
        sim = TransactionSimulator(sid, spec)
        for i in range(n_batches):
            yield sim.batch(batch, t=float(i))

    return {sid: gen(sid, spec) for sid, spec in specs.items()}


def _flip_and_scale(v: np.ndarray) -> np.ndarray:
    return -10.0 * v


def _run(tmp_path: Path, rule: str, attack: bool) -> FederationResult:
    tamper = {ATTACKER: _flip_and_scale} if attack else None
    return run_federation(_topology(tmp_path, rule), _streams(), seed=7, tamper=tamper)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> float:
    res = _run(tmp_path_factory.mktemp("clean"), "mean", attack=False)
    assert res.versions >= 20
    return res.mean_global_auc(HONEST)


def test_the_attack_hurts_the_plain_mean(clean: float, tmp_path: Path) -> None:
    attacked = _run(tmp_path, "mean", attack=True)
    assert clean > 0.75, "the clean federation should learn"
    assert attacked.mean_global_auc(HONEST) < clean - 0.1


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_robust_rules_stay_within_002_of_the_clean_run(clean: float, tmp_path: Path, rule: str) -> None:
    attacked = _run(tmp_path, rule, attack=True)
    assert attacked.versions >= 20 and attacked.rejected == {}
    assert abs(attacked.mean_global_auc(HONEST) - clean) <= 0.02
