"""Secure aggregation wired end to end without Kafka: real learners mask signed updates (their
noised sums), the aggregator verifies them, posts a recovery request, checks signed reveals and
unmasks only the total, which it divides by the buffer's slots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from streamfed.aggregation.aggregator import Aggregator, Rejected
from streamfed.aggregation.build import build_aggregator
from streamfed.aggregation.secure import SecureBuffer
from streamfed.errors import ConfigError
from streamfed.privacy.accountant import resolve_noise_multiplier
from streamfed.privacy.secagg import secagg_params, write_x25519_keypair
from streamfed.privacy.signing import write_keypair
from streamfed.serde import AvroCodec
from streamfed.site.build import build_learner, build_secure_site
from streamfed.site.learner import SiteLearner
from streamfed.site.secure import SecureSite
from streamfed.sources import TransactionSimulator
from streamfed.topology import Topology, load_topology

UPDATES = AvroCodec("model_update")
SECAGG = AvroCodec("secagg_message")
TOPIC = "streamfed.fraud.updates"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    topo = load_topology(
        "fraud",
        {"state_dir": str(tmp_path), "aggregation": {"secure": {"threshold": 2, "dropout_timeout_seconds": 5.0}}},
    )
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
        write_x25519_keypair(topo.secagg_private_key_path(s), topo.secagg_public_key_path(s))
    return topo


class Site:
    """A site's learner and secure client; keeps the noised sum it masked, to check the total."""

    def __init__(self, topo: Topology, site_id: str, seed: int) -> None:
        self.learner: SiteLearner = build_learner(topo, site_id, np.random.default_rng(seed), persist=False)
        self.secure: SecureSite = build_secure_site(topo, self.learner)
        self.noised: np.ndarray | None = None
        sim = TransactionSimulator(site_id, topo.site(site_id).simulator)
        X, y, _ = self.learner.featurizer.transform(sim.batch(600, t=0.0))
        self.learner.learn(X, y)

    def update(self, sequence_after: dict[str, Any] | None = None) -> bytes:
        def encode(noised: np.ndarray, record: dict[str, Any]) -> None:
            self.noised = noised.astype(np.float64)
            self.secure.encode(noised, record)

        record = self.learner.make_update(encode=encode, merge=True)
        assert record is not None
        record.update(sequence_after or {})
        return UPDATES.encode(record)


@pytest.fixture
def sites(topo: Topology) -> dict[str, Site]:
    return {s.id: Site(topo, s.id, seed=i) for i, s in enumerate(topo.sites)}


@pytest.fixture
def agg(topo: Topology) -> tuple[Aggregator, Clock]:
    agg = build_aggregator(topo)
    assert agg.secure is not None
    clock = Clock()
    agg.secure.clock = clock
    agg.secure.reset(0)
    return agg, clock


def _accept(agg: Aggregator, blob: bytes) -> None:
    assert agg.secure is not None
    agg.secure.add(agg.verify(blob, TOPIC, 0, 0))


def _reveal(agg: Aggregator, sites: dict[str, Site], who: list[str]) -> None:
    assert agg.secure is not None and agg.secure.request is not None
    request = SECAGG.decode(SECAGG.encode(agg.secure.make_request()))  # through the wire format
    for sid in who:
        rec = sites[sid].secure.answer(request, current_version=0)
        assert rec is not None
        assert agg.secure.add_reveal(SECAGG.decode(SECAGG.encode(rec)))


def test_the_aggregator_unmasks_the_mean_of_all_sites(topo: Topology, sites: dict[str, Site], agg) -> None:
    agg, _ = agg
    for s in sites.values():
        _accept(agg, s.update())
    assert agg.secure.due()  # every cohort site is in: no need to wait
    agg.secure.make_request()
    assert agg.secure.unmask() is None  # no reveals yet
    _reveal(agg, sites, ["bank-east", "bank-north"])  # any t = 2 sites suffice
    out = agg.secure.unmask()
    assert out is not None
    mean, used = out
    slots = sum(u.num_examples for u in used)
    expected = np.sum([s.noised for s in sites.values()], axis=0)
    # Only quantisation separates the two: stochastic rounding is below one step per site.
    assert np.max(np.abs(mean * slots - expected)) <= 3 / agg.secure.params.scale
    assert sorted(u.site_id for u in used) == sorted(sites)
    assert all(math.isclose(u.weight, u.num_examples / slots) for u in used)


def test_a_dropped_site_does_not_block_the_buffer(topo: Topology, sites: dict[str, Site], agg) -> None:
    agg, clock = agg
    for sid in ("bank-east", "bank-south"):
        _accept(agg, sites[sid].update())
    assert not agg.secure.due()
    clock.t = 5.0  # the dropout timeout
    assert agg.secure.due()
    request = agg.secure.make_request()
    assert request["survivors"] == ["bank-east", "bank-south"] and request["dropped"] == ["bank-north"]
    _reveal(agg, sites, ["bank-east", "bank-south"])
    mean, used = agg.secure.unmask()
    assert sorted(u.site_id for u in used) == ["bank-east", "bank-south"]
    expected = sites["bank-east"].noised + sites["bank-south"].noised
    slots = sum(u.num_examples for u in used)
    assert np.max(np.abs(mean * slots - expected)) <= 3 / agg.secure.params.scale
    # The dropped site's late update cannot join: the membership closed with the request.
    assert _reason(agg, sites["bank-north"].update()) == "stale"


def test_one_site_cannot_unmask_alone(topo: Topology, sites: dict[str, Site], agg) -> None:
    agg, clock = agg
    _accept(agg, sites["bank-east"].update())
    clock.t = 60.0
    assert not agg.secure.due()  # below the threshold the buffer waits, however long


def test_the_aggregator_sees_a_masked_update_not_the_delta(topo: Topology, sites: dict[str, Site], agg) -> None:
    agg, _ = agg
    site = sites["bank-east"]
    pending = agg.verify(site.update(), TOPIC, 0, 0)
    seen = pending.delta.view(np.uint32).astype(np.float64) / 2**32
    # The delta is a few units of C; what arrives is uniform over the 32-bit range and unrelated to
    # it (a fresh self-mask each time; false-alarm rate of both checks below 1e-6).
    assert stats.kstest(seen, "uniform").pvalue > 1e-6
    assert abs(np.corrcoef(seen, site.noised)[0, 1]) < 5 / math.sqrt(seen.size)


def _reason(agg: Aggregator, blob: bytes) -> str:
    with pytest.raises(Rejected) as info:
        agg.verify(blob, TOPIC, 0, 0)
    return info.value.reason


def test_protocol_violations_are_rejected_with_their_reason(topo: Topology, sites: dict[str, Site], agg) -> None:
    agg, _ = agg
    east = sites["bank-east"]
    _accept(agg, east.update())
    # a second masked update of the same site in the same buffer
    east.secure.sent_for = None
    assert _reason(agg, east.update()) == "replay"
    # a plaintext update
    plain = sites["bank-north"].learner.make_update()
    assert plain is not None
    assert _reason(agg, UPDATES.encode(plain)) == "secure"
    # an update masked for another buffer than its base version: the signature covers the buffer
    south = sites["bank-south"]
    assert _reason(agg, south.update({"secure_buffer": 7})) == "signature"


def test_a_forged_or_mismatched_reveal_is_refused(topo: Topology, sites: dict[str, Site], agg) -> None:
    agg, _ = agg
    for s in sites.values():
        _accept(agg, s.update())
    request = agg.secure.make_request()
    rec = sites["bank-east"].secure.answer(request, 0)
    assert rec is not None
    forged = dict(rec, site_id="bank-north")  # claims another site's identity
    assert not agg.secure.add_reveal(forged)
    other = dict(rec, request_id="0" * 32)
    assert not agg.secure.add_reveal(other)
    assert agg.secure.bad_reveals == 1
    assert agg.secure.add_reveal(rec)


def test_a_site_never_answers_a_request_contradicting_an_earlier_one(topo: Topology, sites: dict[str, Site]) -> None:
    north = sites["bank-north"]
    base = {
        "kind": "request",
        "topology": topo.name,
        "buffer": 0,
        "forwarded": {},
        "self_mask_shares": {},
        "pair_seeds": {},
        "created_ms": 0,
    }
    first = {**base, "request_id": "a", "survivors": ["bank-east", "bank-south"], "dropped": ["bank-north"]}
    assert north.secure.answer(first, 0) is not None
    # a later request calling bank-north a survivor would let pairwise seeds unmask its update
    second = {**base, "request_id": "b", "survivors": sorted(sites), "dropped": []}
    assert north.secure.answer(second, 0) is None
    assert north.secure.refusals == 1
    # a request for a buffer already closed (a newer version exists) is ignored
    assert north.secure.answer({**first, "request_id": "c"}, current_version=1) is None


def test_each_site_adds_its_share_of_the_noise_and_accounts_the_full_sigma(topo: Topology, sites) -> None:
    sigma = resolve_noise_multiplier(topo.privacy)
    learner = sites["bank-east"].learner
    blob = sites["bank-east"].update()
    rec = UPDATES.decode(blob)
    assert rec["noise_std"] == pytest.approx(sigma * topo.privacy.clip_norm / math.sqrt(2))
    assert rec["secure_buffer"] == 0
    assert sorted(rec["self_mask_shares"]) == ["bank-north", "bank-south"]
    # the ledger holds the release at the calibrated sigma: the unmasked sum carries sigma C
    assert learner.ledger.releases[-1].sigma == pytest.approx(sigma)


def test_secure_needs_the_mean_rule_and_a_reachable_threshold(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology("fraud", {"aggregation": {"rule": "median", "secure": {}}})
    assert "aggregation" in str(info.value) and "mean" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_topology("fraud", {"aggregation": {"secure": {"threshold": 4}}})
    assert "threshold" in str(info.value)


def test_missing_x25519_keys_say_how_to_make_them(tmp_path: Path) -> None:
    topo = load_topology("fraud", {"state_dir": str(tmp_path), "aggregation": {"secure": {}}})
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    learner = build_learner(topo, "bank-east", persist=False)
    with pytest.raises(ConfigError, match="keys generate"):
        build_secure_site(topo, learner)


def test_parties_agree_on_the_parameters(topo: Topology) -> None:
    p = secagg_params(topo)
    assert p.cohort == ("bank-east", "bank-north", "bank-south")
    assert p.bound > topo.privacy.clip_norm
    # the sum of three values within the bound fits a signed 32-bit integer
    assert 3 * (p.bound + 1) * p.scale < 2**31
    assert isinstance(SecureBuffer, type)


def test_a_restarted_site_still_refuses_a_contradicting_request(topo: Topology, tmp_path: Path) -> None:
    learner = build_learner(topo, "bank-north", np.random.default_rng(0), persist=True)
    first_run = build_secure_site(topo, learner)
    assert first_run.state_path is not None
    base = {"kind": "request", "topology": topo.name, "buffer": 4, "forwarded": {}, "created_ms": 0}
    dropped_north = {**base, "request_id": "a", "survivors": ["bank-east", "bank-south"], "dropped": ["bank-north"]}
    assert first_run.answer(dropped_north, 4) is not None
    second_run = build_secure_site(topo, build_learner(topo, "bank-north", persist=True))
    everyone = {**base, "request_id": "b", "survivors": ["bank-east", "bank-north", "bank-south"], "dropped": []}
    assert second_run.answer(everyone, 4) is None
    assert second_run.refusals == 1
    # the same membership again is fine (an aggregator restarted mid-buffer re-asks it)
    assert second_run.answer({**dropped_north, "request_id": "c"}, 4) is not None
