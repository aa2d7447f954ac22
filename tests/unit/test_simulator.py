"""The transaction simulator: per-site fraud rates, valid records, and concept drift."""

from __future__ import annotations

import numpy as np
import pytest

from streamfed.learners.features import Featurizer
from streamfed.serde import AvroCodec
from streamfed.sources import MERCHANT_CATEGORIES, TransactionSimulator
from streamfed.topology import SimulatorSpec, load_topology

N = 20_000


@pytest.fixture(scope="module")
def fraud_batches() -> dict[str, list[dict]]:
    topo = load_topology("fraud")
    out = {}
    for site in topo.sites:
        assert site.simulator is not None and site.simulator.seed is not None
        out[site.id] = TransactionSimulator(site.id, site.simulator).batch(N, t=0.0)
    return out


def _fraud_rate(records: list[dict]) -> float:
    return float(np.mean([r["is_fraud"] for r in records]))


def test_fraud_rates_follow_the_specs(fraud_batches: dict[str, list[dict]]) -> None:
    specs = {s.id: s.simulator.fraud_rate for s in load_topology("fraud").sites if s.simulator}
    by_spec = sorted(specs, key=specs.__getitem__)
    assert by_spec == ["bank-north", "bank-south", "bank-east"]
    rates = [_fraud_rate(fraud_batches[s]) for s in by_spec]
    assert rates[0] < rates[1] < rates[2]
    for site in by_spec:  # "approximate base rate": within a factor of two of the spec
        assert specs[site] / 2 < _fraud_rate(fraud_batches[site]) < specs[site] * 2


def test_online_share_moves_the_merchant_mix(fraud_batches: dict[str, list[dict]]) -> None:
    def online(records: list[dict]) -> float:
        return float(np.mean([r["merchant_category"] in ("online_retail", "electronics") for r in records]))

    # bank-north has online_share 0.25, bank-south 0.5
    assert online(fraud_batches["bank-north"]) < online(fraud_batches["bank-south"])


def test_records_encode_and_featurize(fraud_batches: dict[str, list[dict]]) -> None:
    topo = load_topology("fraud")
    codec = AvroCodec("card_transaction")
    featurizer = Featurizer(topo.model.features, topo.model.label)
    records = fraud_batches["bank-south"][:3000]
    decoded = [codec.decode(codec.encode(r)) for r in records]
    assert decoded == records
    X, y, status = featurizer.transform(decoded)
    assert all(s is True for s in status)
    assert np.isfinite(X).all()
    assert not np.isnan(y).any()  # label_fraction 1.0: every record carries its label
    assert {r["merchant_category"] for r in records} == set(MERCHANT_CATEGORIES)
    assert len({r["transaction_id"] for r in records}) == len(records)
    assert {r["site_id"] for r in records} == {"bank-south"}


def test_same_seed_same_records() -> None:
    spec = SimulatorSpec(seed=3)
    a = TransactionSimulator("s", spec).batch(500, t=0.0)
    b = TransactionSimulator("s", spec).batch(500, t=0.0)
    c = TransactionSimulator("s", SimulatorSpec(seed=4)).batch(500, t=0.0)
    assert a == b
    assert [r["amount"] for r in a] != [r["amount"] for r in c]


def test_label_fraction() -> None:
    records = TransactionSimulator("s", SimulatorSpec(seed=5, label_fraction=0.3)).batch(5000, t=0.0)
    labelled = np.mean([r["is_fraud"] is not None for r in records])
    assert 0.27 < labelled < 0.33


def test_drift_moves_fraud_between_categories() -> None:
    spec = SimulatorSpec(seed=21, fraud_rate=0.05, drift_period_seconds=300.0)
    sim = TransactionSimulator("s", spec)
    before = sim.batch(N * 2, t=0.0)
    after = sim.batch(N * 2, t=2 * spec.drift_period_seconds)

    def rate(records: list[dict], category: str) -> float:
        return _fraud_rate([r for r in records if r["merchant_category"] == category])

    # at t=0 fraud favours online_retail; two periods later it has moved on to travel
    assert rate(before, "online_retail") > 2 * rate(before, "travel")
    assert rate(after, "travel") > 2 * rate(after, "online_retail")
    assert rate(after, "travel") > 2 * rate(before, "travel")
    assert rate(before, "online_retail") > 2 * rate(after, "online_retail")
