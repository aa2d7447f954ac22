"""The site learner on CPU: deep steps must show up in the delta and leave the global model alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamfed.learners.model import initial_params
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
    X, y, status = learner.model.featurizer.transform(records)
    assert all(s is True for s in status)
    learner.learn(X, y)
    assert learner.maybe_step()  # 3000 labelled rows >= step_every_records (1000)
    return learner


def test_the_online_part_of_the_delta_moves(learner: SiteLearner) -> None:
    n_online = learner.model.featurizer.dim + 1
    delta = learner.model.get_params() - learner.base
    assert np.abs(delta[:n_online]).max() > 0.01


def test_deep_steps_show_in_the_delta_and_not_in_the_base(learner: SiteLearner) -> None:
    n_online = learner.model.featurizer.dim + 1
    version0 = initial_params(learner.spec)
    np.testing.assert_array_equal(learner.base, version0)  # no version arrived: the base is still version 0
    np.testing.assert_array_equal(learner.global_model.get_params(), version0)
    delta = learner.model.get_params() - learner.base
    assert np.abs(delta[n_online:]).max() > 0.0
