"""Aggregator.verify on encoded ModelUpdates, with no Kafka: each check has its reason code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamfed.aggregation.aggregator import Aggregator, Rejected
from streamfed.aggregation.build import build_aggregator
from streamfed.aggregation.fedbuff import PendingUpdate
from streamfed.privacy.signing import SiteSigner, load_private_key, write_keypair
from streamfed.serde import AvroCodec, params_to_bytes
from streamfed.topology import Topology, load_topology

CODEC = AvroCodec("model_update")
SITE = "bank-south"


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    topo = load_topology("fraud", {"state_dir": str(tmp_path)})
    for site in topo.sites:
        write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    return topo


@pytest.fixture
def agg(topo: Topology) -> Aggregator:
    return build_aggregator(topo)


Make = Callable[..., bytes]


@pytest.fixture
def make(topo: Topology, agg: Aggregator) -> Make:
    """Encode a signed update of ``site``; keyword arguments override fields before signing."""
    signers = {s.id: SiteSigner(load_private_key(topo.private_key_path(s))) for s in topo.sites}
    n = agg.model.initial_params.size

    def build(site: str = SITE, signer: SiteSigner | None = None, after: dict[str, Any] | None = None, **kw: Any):
        delta = kw.pop("delta", np.random.default_rng(kw.get("sequence", 1)).normal(0, 0.01, n).astype(np.float32))
        rec: dict[str, Any] = {
            "topology": topo.name,
            "model": topo.model.name,
            "site_id": site,
            "sequence": 1,
            "base_version": 0,
            "created_ms": 1_700_000_000_000,
            "num_examples": 2000,
            "num_params": int(delta.size),
            "params": params_to_bytes(delta),
            "clip_norm": 1.0,
            "noise_std": 1.95,
            "epsilon_spent": 5.0,
            "delta": 1e-6,
            "first_event_ms": 1_699_999_999_000,
            "cpu_seconds": 0.25,
            "gpu_seconds": 0.0,
            "gpu_energy_joules": None,
            "mechanism": "window_sum",
            "noise_multiplier": agg.model.noise_multiplier,
            "steps": 1,
            "sampling_rate": 1.0,
        }
        rec.update(kw)
        (signer or signers[site]).sign(rec)
        rec.update(after or {})  # changes made after signing: tampering in transit
        return CODEC.encode(rec)

    return build


def _reason(agg: Aggregator, blob: bytes | None) -> str:
    with pytest.raises(Rejected) as info:
        agg.verify(blob, "streamfed.fraud.updates", 0, 0)
    return info.value.reason


def test_the_aggregator_is_built_without_kafka(agg: Aggregator, topo: Topology) -> None:
    assert agg.model.initial_params.size == 15 + 129  # linear 14 + 1, deep 14*8 + 8 + 8 + 1
    assert agg.model.initial_params.dtype == np.float32
    assert agg.model.max_update_norm > topo.privacy.clip_norm
    assert agg.model.mechanism == "window_sum" and agg.model.noise_multiplier > 0
    assert agg.state.version == 0
    assert agg._consumer is None and agg.txn.producer is None


def test_a_valid_update_passes(agg: Aggregator, make: Make) -> None:
    delta = np.linspace(-0.01, 0.01, agg.model.initial_params.size, dtype=np.float32)
    pending = agg.verify(make(delta=delta, sequence=4, num_examples=321), "streamfed.fraud.updates", 2, 77)
    assert isinstance(pending, PendingUpdate)
    assert pending.site_id == SITE
    assert pending.sequence == 4
    assert pending.num_examples == 321
    assert (pending.topic, pending.partition, pending.offset) == ("streamfed.fraud.updates", 2, 77)
    assert pending.staleness == 0
    assert pending.noise_std == 1.95 and pending.epsilon_spent == 5.0
    np.testing.assert_array_equal(pending.delta, delta)


def test_increasing_sequences_from_several_sites_pass(agg: Aggregator, make: Make) -> None:
    for seq in (1, 2, 5):
        for site in ("bank-north", "bank-east"):
            assert agg.verify(make(site=site, sequence=seq)).sequence == seq


@pytest.mark.parametrize("seq", [3, 2])
def test_a_replay_is_rejected(agg: Aggregator, make: Make, seq: int) -> None:
    agg.verify(make(sequence=3))
    assert _reason(agg, make(sequence=seq)) == "replay"
    # another site's sequence numbers are its own
    agg.verify(make(site="bank-north", sequence=1))


def test_each_worker_of_a_site_counts_its_own_sequence(agg: Aggregator, make: Make) -> None:
    """A site run as several processes (streamfed site --worker): each worker's updates count from 1,
    the site's own and each worker's are separate spaces, and a replay inside one is refused."""
    for seq in (1, 2):
        for worker in ("", "w0", "w1"):
            got = agg.verify(make(sequence=seq, worker=worker))
            assert (got.worker, got.sequence, got.stream) == (
                worker,
                seq,
                f"{SITE}/{worker}" if worker else SITE,
            )
    assert _reason(agg, make(sequence=2, worker="w1")) == "replay"
    assert agg.checks.last_seq == {SITE: 2, f"{SITE}/w0": 2, f"{SITE}/w1": 2}


def test_the_worker_is_signed(agg: Aggregator, make: Make) -> None:
    agg.verify(make(sequence=5, worker="w0"))
    # w0's update replayed as if w1 had sent it: the worker names the sequence space, so it is signed
    assert _reason(agg, make(sequence=5, worker="w0", after={"worker": "w1"})) == "signature"
    assert _reason(agg, make(sequence=6, worker="w0", after={"worker": ""})) == "signature"


def test_a_signature_by_another_key_is_an_unknown_key(agg: Aggregator, make: Make, tmp_path: Path) -> None:
    write_keypair(tmp_path / "forger.key", tmp_path / "forger.pub")
    forger = SiteSigner(load_private_key(tmp_path / "forger.key"))
    assert _reason(agg, make(signer=forger)) == "unknown_key"


def test_a_signature_by_another_site_is_an_unknown_key(agg: Aggregator, make: Make, topo: Topology) -> None:
    north = SiteSigner(load_private_key(topo.private_key_path(topo.site("bank-north"))))
    assert _reason(agg, make(site=SITE, signer=north)) == "unknown_key"


def test_a_forged_signature_under_the_right_key_id(agg: Aggregator, make: Make, tmp_path: Path, topo: Topology) -> None:
    write_keypair(tmp_path / "forger.key", tmp_path / "forger.pub")
    forger = SiteSigner(load_private_key(tmp_path / "forger.key"))
    right = SiteSigner(load_private_key(topo.private_key_path(topo.site(SITE))))
    forger.key_id = right.key_id
    assert _reason(agg, make(signer=forger)) == "signature"


def test_tampered_params_fail_the_signature(agg: Aggregator, make: Make) -> None:
    n = agg.model.initial_params.size
    evil = params_to_bytes(np.full(n, 0.01, dtype=np.float32))
    assert _reason(agg, make(after={"params": evil})) == "signature"


def test_tampered_header_fails_the_signature(agg: Aggregator, make: Make) -> None:
    assert _reason(agg, make(after={"num_examples": 10**6})) == "signature"


def test_an_unknown_site(agg: Aggregator, make: Make, tmp_path: Path) -> None:
    write_keypair(tmp_path / "m.key", tmp_path / "m.pub")
    mallory = SiteSigner(load_private_key(tmp_path / "m.key"))
    assert _reason(agg, make(site="mallory", signer=mallory)) == "unknown_site"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_params(agg: Aggregator, make: Make, bad: float) -> None:
    delta = np.zeros(agg.model.initial_params.size, dtype=np.float32)
    delta[7] = bad
    assert _reason(agg, make(delta=delta)) == "not_finite"


@pytest.mark.parametrize("change", [-1, 1])
def test_the_wrong_number_of_params(agg: Aggregator, make: Make, change: int) -> None:
    delta = np.zeros(agg.model.initial_params.size + change, dtype=np.float32)
    assert _reason(agg, make(delta=delta)) == "shape"


def test_num_params_field_disagreeing_with_the_blob(agg: Aggregator, make: Make) -> None:
    assert _reason(agg, make(num_params=agg.model.initial_params.size + 1)) == "shape"


def test_a_norm_above_the_limit(agg: Aggregator, make: Make) -> None:
    n = agg.model.initial_params.size
    limit = agg.model.norm_bound(2000)  # the slot count the test updates declare
    just_below = np.full(n, 0.999 * limit / np.sqrt(n), dtype=np.float32)
    assert agg.verify(make(delta=just_below, sequence=1)).site_id == SITE
    above = np.full(n, 1.01 * limit / np.sqrt(n), dtype=np.float32)
    assert _reason(agg, make(delta=above, sequence=2)) == "norm"


def test_a_base_version_ahead_of_the_aggregator(agg: Aggregator, make: Make) -> None:
    agg.state.version = 4
    assert agg.verify(make(base_version=4, sequence=1)).staleness == 0
    assert _reason(agg, make(base_version=5, sequence=2)) == "future_base"


def test_a_stale_update(agg: Aggregator, make: Make) -> None:
    max_staleness = agg.spec.max_staleness
    agg.state.version = 100
    ok = agg.verify(make(base_version=100 - max_staleness, sequence=1))
    assert ok.staleness == max_staleness
    assert _reason(agg, make(base_version=100 - max_staleness - 1, sequence=2)) == "stale"


def test_an_update_for_another_model(agg: Aggregator, make: Make) -> None:
    assert _reason(agg, make(model="other-model")) == "wrong_model"
    assert _reason(agg, make(topology="heart", sequence=2)) == "wrong_model"


@pytest.mark.parametrize("count", [-1, 0])
def test_an_example_count_below_one(agg: Aggregator, make: Make, count: int) -> None:
    assert _reason(agg, make(num_examples=count)) == "metadata"


def test_an_update_declaring_another_mechanism_or_less_noise(agg: Aggregator, make: Make) -> None:
    assert _reason(agg, make(mechanism="dp_sgd", sequence=1)) == "metadata"
    low = agg.model.noise_multiplier * 0.9
    assert _reason(agg, make(noise_multiplier=low, sequence=2)) == "metadata"
    assert agg.verify(make(noise_multiplier=agg.model.noise_multiplier * 2, sequence=3)).sequence == 3


@pytest.mark.parametrize(
    "blob",
    [None, b"", b"\x00\x01", b"garbage bytes that are no update", bytes(range(256))],
    ids=["none", "empty", "short", "text", "bytes"],
)
def test_garbage_does_not_decode(agg: Aggregator, blob: bytes | None) -> None:
    assert _reason(agg, blob) == "decode"


def test_a_record_of_another_schema_does_not_decode(agg: Aggregator) -> None:
    other = AvroCodec("dead_letter").encode(
        {
            "component": "site",
            "source_topic": "t",
            "partition": 0,
            "offset": 0,
            "reason": "x",
            "detail": "",
            "created_ms": 0,
        }
    )
    assert _reason(agg, other) == "decode"


def test_truncated_update_does_not_decode(agg: Aggregator, make: Make) -> None:
    blob = make()
    assert _reason(agg, blob[: len(blob) // 2]) == "decode"
    assert _reason(agg, blob + b"\x00") == "decode"


def test_staleness_counts_only_the_versions_that_existed_when_the_update_was_published(
    agg: Aggregator, make: Make
) -> None:
    """After an aggregator outage the backlog is read while new versions are made from it: those
    versions are newer than the updates and must not make them stale."""
    limit = agg.spec.max_staleness
    agg.state.version = 5 + 2 * limit
    # versions 1..5 existed before the updates were made (created_ms 1.7e12); the rest came after
    agg.checks.version_times = {
        v: (1_600_000_000_000 if v <= 5 else 1_800_000_000_000) for v in range(1, 6 + 2 * limit)
    }
    ok = agg.verify(make(base_version=5, sequence=1))  # up to date when published
    assert ok.staleness == 2 * limit  # the FedBuff weight still sees how far the model moved since
    agg.checks.version_times = {v: 1_600_000_000_000 for v in range(1, 6 + 2 * limit)}  # all existed
    assert _reason(agg, make(base_version=5, sequence=3)) == "stale"
