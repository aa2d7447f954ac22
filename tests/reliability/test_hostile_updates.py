"""Hostile updates on the updates topic: each rejected with its reason and counted, between good
updates that still make versions; the aggregator never stops."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from streamfed.aggregation.build import build_aggregator
from streamfed.kafka.clients import producer_config
from streamfed.kafka.topics import provision_topology
from streamfed.privacy.signing import SiteSigner, generate_keypair, load_private_key, write_keypair
from streamfed.registry import read_topic
from streamfed.serde import AvroCodec, params_to_bytes
from tests.integration.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.reliability]

CODEC = AvroCodec("model_update")


def test_hostile_updates_are_rejected_with_their_reasons_and_versions_go_on(topology_factory, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    _, topo = topology_factory(
        "fraud", {"aggregation": {"buffer_size": 2, "max_staleness": 1, "commit_interval_seconds": 0.5}}
    )
    provision_topology(topo)
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    signers = {s.id: SiteSigner(load_private_key(topo.private_key_path(s))) for s in topo.sites}
    agg = build_aggregator(topo)
    n = agg.model.initial_params.size
    seq = dict.fromkeys(signers, 0)
    rng = np.random.default_rng(3)

    def update(site: str, base: int, signer: SiteSigner | None = None, **over: Any) -> dict[str, Any]:
        seq[site] = seq.get(site, 0) + 1
        delta = over.pop("delta", rng.normal(0, 0.01, n).astype(np.float32))
        rec: dict[str, Any] = {
            "topology": topo.name,
            "model": topo.model.name,
            "site_id": site,
            "sequence": seq[site],
            "base_version": base,
            "created_ms": int(time.time() * 1000),  # now: staleness is judged as of publication
            "num_examples": 500,
            "num_params": int(delta.size),
            "params": params_to_bytes(delta),
            "clip_norm": 1.0,
            "noise_std": 0.5,
            "epsilon_spent": 1.0,
            "delta": 1e-6,
            "first_event_ms": 1_700_000_000_000,
            "cpu_seconds": 0.1,
            "gpu_seconds": 0.0,
            "gpu_energy_joules": None,
            "mechanism": "window_sum",
            "noise_multiplier": agg.model.noise_multiplier,
            "steps": 1,
            "sampling_rate": 1.0,
        }
        rec.update(over)
        return (signer or signers[site]).sign(rec)

    prod = Producer(producer_config(topo.kafka))

    def send(value: bytes | None, key: str = "x") -> None:
        prod.produce(topo.updates_topic, key=key.encode(), value=value)

    ids = list(signers)
    runner = threading.Thread(target=agg.run, kwargs={"timeout_s": 240}, daemon=True)
    runner.start()
    try:
        # Phase 1: good updates make versions 1..3.
        first = [update(ids[i % 3], 0) for i in range(2)]
        for u in first:
            send(CODEC.encode(u), u["site_id"])
        prod.flush(10)
        wait_for(lambda: agg.report.version >= 1, 60, "version 1")
        for v in (1, 2):
            for i in range(2):
                u = update(ids[i], v)
                send(CODEC.encode(u), u["site_id"])
            prod.flush(10)
            wait_for(lambda v=v: agg.report.version >= v + 1, 60, f"version {v + 1}")
        assert agg.report.version == 3

        # Phase 2: the hostile ones, keyed by the site they claim (so each site's order holds).
        priv_pem, _ = generate_keypair()
        stranger = SiteSigner(serialization.load_pem_private_key(priv_pem, None))  # type: ignore[arg-type]
        forged = update(ids[0], 3)
        forged["num_examples"] = 10**9  # changed after signing
        big = rng.normal(0, 1, n).astype(np.float32) * 1e6
        nan = rng.normal(0, 0.01, n).astype(np.float32)
        nan[::7] = np.nan
        hostile = {
            "signature": CODEC.encode(forged),
            "unknown_key": CODEC.encode(update(ids[0], 3, signer=stranger)),
            "unknown_site": CODEC.encode(update("bank-mars", 3, signer=signers[ids[0]])),
            "replay": CODEC.encode(first[0]),
            "stale": CODEC.encode(update(ids[1], 0)),
            "future_base": CODEC.encode(update(ids[1], 99)),
            "shape": CODEC.encode(update(ids[2], 3, delta=np.zeros(n + 3, dtype=np.float32))),
            "not_finite": CODEC.encode(update(ids[2], 3, delta=nan)),
            "norm": CODEC.encode(update(ids[0], 3, delta=big)),
            "wrong_model": CODEC.encode(update(ids[1], 3, model="another-model")),
            "decode": b"\x00\x00\x00\x00\x01 garbage",
        }
        for reason, value in hostile.items():
            claimed = CODEC.decode(value)["site_id"] if reason != "decode" else "x"
            send(value, claimed)
            send(None, f"null-{reason}")  # a null value too: decode
        prod.flush(10)
        try:
            wait_for(lambda: agg.report.rejected >= 2 * len(hostile), 60, "every hostile update rejected")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; rejected so far: {agg.report.rejected_reasons}") from None

        # Phase 3: good updates still make versions.
        for i in range(4):
            u = update(ids[i % 3], agg.report.version)
            send(CODEC.encode(u), u["site_id"])
        prod.flush(10)
        wait_for(lambda: agg.report.version >= 5, 60, "two versions after the attack")
        assert runner.is_alive(), "the aggregator stopped"
    finally:
        agg.stop_event.set()
        runner.join(60)
    assert not runner.is_alive()
    expected = Counter({reason: 1 for reason in hostile})
    expected["decode"] += len(hostile)
    assert agg.report.rejected_reasons == dict(expected)
    letters = [r for _, r in read_topic(topo.kafka, topo.rejected_topic, AvroCodec("dead_letter"))]
    assert Counter(r["reason"] for r in letters if isinstance(r, dict)) == expected
    assert agg.report.accepted == 10
