"""The site learner on CPU: the personal model learns every record, the global version is untouched
until a version arrives, the federated contribution fills exact windows, and an update record says
what mechanism it applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamfed.privacy.signing import write_keypair
from streamfed.site.build import build_learner
from streamfed.site.learner import SiteLearner
from streamfed.sources import TransactionSimulator
from streamfed.topology import load_topology


@pytest.fixture
def learner(tmp_path: Path) -> SiteLearner:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    learner = build_learner(topo, site.id, rng=np.random.default_rng(0), persist=False, clock=lambda: 0.0, device="cpu")
    assert site.simulator is not None
    records = TransactionSimulator(site.id, site.simulator).batch(3000, t=0.0)
    X, y, status = learner.featurizer.transform(records)
    assert all(s is True for s in status)
    learner.scores = learner.learn(X, y)  # type: ignore[attr-defined]
    assert learner.maybe_step()  # 3000 labelled rows >= step_every_records (1000)
    return learner


def test_every_row_gets_three_prequential_scores(learner: SiteLearner) -> None:
    scores = learner.scores  # type: ignore[attr-defined]
    for p in scores:
        assert p.shape == (3000,) and ((p >= 0) & (p <= 1)).all()
    # version 0 is the same for every row; the personal model learnt as it went
    assert np.ptp(scores.personal[-500:]) > 0.01
    learner.export_quality()  # what the processor does before it reports (this clock never moves)
    assert learner.report.local_auc is not None and learner.report.global_auc is not None
    assert learner.report.auc is not None and learner.report.served_weight is not None


def test_the_personal_model_learns_and_the_global_base_stays_version_0(learner: SiteLearner) -> None:
    assert np.abs(learner.personal.online.get_params()).max() > 0.01
    np.testing.assert_array_equal(learner.base, learner.federated.initial_params())
    assert learner.report.deep_steps == learner.spec.deep.steps


def test_windows_are_exact_and_an_update_says_its_mechanism(learner: SiteLearner) -> None:
    c = learner.contribution
    assert c.has_full_window and len(c.full) == 3000 // learner.update.every_records
    assert learner.due()
    rec = learner.make_update()
    assert rec is not None
    assert rec["num_examples"] == learner.update.every_records  # one window per release
    assert rec["mechanism"] == "window_sum" and rec["steps"] == 1 and rec["sampling_rate"] == 1.0
    assert rec["noise_multiplier"] == learner.mechanism.noise_multiplier > 0
    assert rec["noise_std"] == pytest.approx(learner.mechanism.noise_std)
    assert rec["num_params"] == learner.num_params == learner.federated.num_params
    assert len(learner.ledger.releases) == 1 and learner.ledger.releases[0].num_examples == rec["num_examples"]
    assert learner.due() and c.pending_examples == 3000 - rec["num_examples"]
    merged = learner.make_update(merge=True)  # secure aggregation: every full window in one sum
    assert merged is not None and merged["num_examples"] == 3000 - rec["num_examples"]
    assert not learner.due() and c.pending_examples == 0


def test_a_rebase_moves_the_global_scores_not_the_personal_model(learner: SiteLearner) -> None:
    before = learner.personal.online.get_params()
    new = learner.base + np.float32(0.5)
    learner.rebase(1, new, "sha")
    np.testing.assert_array_equal(learner.contribution.point, new)
    np.testing.assert_array_equal(learner.personal.online.get_params(), before)
    assert learner.base_version == 1 and not learner.wants(1, "sha") and learner.wants(1, "other")
    with pytest.raises(ValueError, match="parameters"):
        learner.rebase(2, new[:-1], "x")


def test_a_restarted_site_numbers_its_updates_after_the_last_one_in_its_ledger(tmp_path: Path) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    first = build_learner(topo, site.id, rng=np.random.default_rng(0), clock=lambda: 0.0, device="cpu")
    assert site.simulator is not None
    X, y, _ = first.featurizer.transform(TransactionSimulator(site.id, site.simulator).batch(1500, t=0.0))
    first.learn(X, y)
    made = [first.make_update() for _ in range(3)]
    assert [r["sequence"] for r in made if r is not None] == [1, 2, 3]
    again = build_learner(topo, site.id, rng=np.random.default_rng(1), clock=lambda: 0.0, device="cpu")
    assert again.state.next_sequence == 4 and again.report.last_sequence == 3
