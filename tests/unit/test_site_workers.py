"""A site run as several processes (``streamfed site --worker``): a ledger and a sequence space each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamfed.errors import ConfigError
from streamfed.privacy.accountant import PrivacyLedger
from streamfed.privacy.report import privacy_rows
from streamfed.privacy.signing import write_keypair
from streamfed.site.build import build_learner, build_site, site_home, site_ledgers
from streamfed.sources import TransactionSimulator
from streamfed.topology import Topology, load_topology


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    topo = load_topology("fraud", {"state_dir": str(tmp_path), "update": {"every_records": 50}})
    for site in topo.sites:
        write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    return topo


def _publish(topo: Topology, worker: str, updates: int) -> list[dict]:
    site = topo.sites[0]
    learner = build_learner(topo, site.id, rng=np.random.default_rng(1), worker=worker, clock=lambda: 0.0, device="cpu")
    assert site.simulator is not None
    records = TransactionSimulator(site.id, site.simulator).batch(50 * updates, t=0.0)
    for r in records:
        r["is_fraud"] = bool(r["is_fraud"])
    X, y, _ = learner.featurizer.transform(records)
    learner.learn(X, y)
    out = []
    while learner.due():
        out.append(learner.make_update())
    return out


def test_workers_keep_their_own_ledgers_and_sequences(topo: Topology) -> None:
    site = topo.sites[0].id
    plain, w0, w1 = _publish(topo, "", 2), _publish(topo, "w0", 3), _publish(topo, "w1", 1)
    assert [(u["worker"], u["sequence"]) for u in plain + w0 + w1] == [
        ("", 1),
        ("", 2),
        ("w0", 1),
        ("w0", 2),
        ("w0", 3),
        ("w1", 1),
    ]
    assert site_home(topo, site, "w0") == topo.home / "sites" / site / "workers" / "w0"
    spaces = dict(site_ledgers(topo))
    assert set(spaces) >= {site, f"{site}/w0", f"{site}/w1"}
    assert [len(PrivacyLedger(1e-6, path=spaces[k]).releases) for k in (site, f"{site}/w0", f"{site}/w1")] == [2, 3, 1]
    # a worker restarted continues its own sequence, and its lifetime epsilon grows from its own ledger
    again = _publish(topo, "w1", 1)
    assert again[0]["sequence"] == 2 and again[0]["epsilon_spent"] > w1[0]["epsilon_spent"]
    assert again[0]["epsilon_spent"] == pytest.approx(plain[1]["epsilon_spent"])  # two releases each

    # the auditor's report keys releases by sequence space
    ledgers = {k: PrivacyLedger(1e-6, path=p).releases for k, p in site_ledgers(topo)}
    version = {"version": 1, "contributions": [{"site_id": site, "sequence": 3, "worker": "w0"}]}
    rows = privacy_rows(ledgers, [version], 1e-6, topo.privacy.max_updates_per_record)
    assert [(r.site, r.releases, r.last_sequence) for r in rows] == [(f"{site}/w0", 3, 3)]


@pytest.mark.parametrize("name", ["a/b", "", "x" * 65, "ü"])
def test_a_bad_worker_name_is_refused(topo: Topology, name: str) -> None:
    if not name:
        assert site_home(topo, topo.sites[0].id, name) == topo.home / "sites" / topo.sites[0].id
        return
    with pytest.raises(ConfigError, match="worker name"):
        build_learner(topo, topo.sites[0].id, worker=name)


def test_secure_aggregation_takes_no_workers(tmp_path: Path) -> None:
    topo = load_topology(
        "fraud",
        {"state_dir": str(tmp_path), "aggregation": {"secure": {"threshold": 2, "dropout_timeout_seconds": 5.0}}},
    )
    with pytest.raises(ConfigError, match="secure aggregation takes one process per site"):
        build_site(topo, topo.sites[0].id, worker="w0")
