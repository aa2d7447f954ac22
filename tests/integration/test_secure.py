"""Secure aggregation on the broker: versions come from masked updates only, and a site that stops
does not block the federation (its buffer closes after the dropout timeout with the survivors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamfed.privacy.secagg import write_x25519_keypair
from streamfed.privacy.signing import write_keypair
from streamfed.registry import dedupe_versions, read_topic
from streamfed.serde.avro import AvroCodec
from streamfed.serde.tensors import params_from_bytes
from tests.integration.helpers import start, stop, tail, wait_for
from tests.integration.lineage import check_lineage, read_lineage

pytestmark = pytest.mark.kafka

SECURE = {
    "update": {"every_records": 800, "every_seconds": 1.0, "min_records": 50},
    "aggregation": {"secure": {"threshold": 2, "dropout_timeout_seconds": 3.0}},
}


def test_secure_aggregation_makes_versions_and_survives_a_dropout(
    topology_factory, tmp_path: Path, real_kafka: bool
) -> None:
    path, topo = topology_factory("fraud", SECURE)
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
        write_x25519_keypair(topo.secagg_private_key_path(s), topo.secagg_public_key_path(s))
    logs = tmp_path / "logs"
    args = ["--topology", str(path)]
    sites = {s.id: start(["site", *args, "--site", s.id], logs / f"{s.id}.log", tmp_path) for s in topo.sites}
    sim = start(["simulate", *args, "--rate-scale", "0.5"], logs / "sim.log", tmp_path)
    agg = start(["aggregator", *args], logs / "agg.log", tmp_path)
    dropped = "bank-east"
    try:
        wait_for(lambda: len(read_lineage(topo)) >= 3, 120, f"three secure versions\n{tail(logs / 'agg.log')}")
        stop(sites.pop(dropped))
        cut = max(r["version"] for r in read_lineage(topo))
        wait_for(
            lambda: max(r["version"] for r in read_lineage(topo)) >= cut + 3,
            120,
            f"three versions after {dropped} stopped\n{tail(logs / 'agg.log')}",
        )
    finally:
        stop(sim)
        codes = {name: stop(p) for name, p in sites.items()}
        codes["aggregator"] = stop(agg)
    assert all(c == 0 for c in codes.values()), f"{codes}\n{tail(logs / 'agg.log')}"
    lineage = read_lineage(topo)
    check_lineage(lineage, real_kafka)  # every accepted update in exactly one version, none reused
    by_version = {r["version"]: r for r in dedupe_versions(lineage)}
    for v, rec in by_version.items():
        members = {u["site_id"] for u in rec["updates"]}
        assert len(members) >= 2, f"version {v} unmasked fewer than threshold updates: {members}"
        assert len(members) == len(rec["updates"]), f"version {v}: one site twice in a buffer"
        assert all(u["base_version"] == v - 1 for u in rec["updates"]), "a buffer holds one base version"
    late = [rec for v, rec in by_version.items() if v > cut + 1]
    assert late and all(dropped not in {u["site_id"] for u in r["updates"]} for r in late)
    # What the aggregator received were masked updates; what it published are finite models.
    updates = read_topic(topo.kafka, topo.updates_topic, AvroCodec("model_update"), idle_s=2.0)
    assert updates and all(rec["secure_buffer"] is not None and rec["self_mask_shares"] for _, rec in updates)
    models = read_topic(topo.kafka, topo.models_topic, AvroCodec("model_version"), idle_s=2.0)
    n = len(params_from_bytes(models[0][1]["params"]))
    for _, m in models:
        assert np.isfinite(params_from_bytes(m["params"], n)).all()
    rejected = read_topic(topo.kafka, topo.rejected_topic, AvroCodec("dead_letter"), idle_s=1.0)
    reasons = {rec["reason"] for _, rec in rejected}
    assert reasons <= {"stale"}, f"unexpected rejections: {reasons}"
