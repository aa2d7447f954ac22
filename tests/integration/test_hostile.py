"""Malformed records and forged or replayed updates are rejected and counted; nothing stops."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from streamfed.kafka.clients import make_producer
from streamfed.privacy.signing import SiteSigner, generate_keypair
from streamfed.registry import read_topic
from streamfed.serde.avro import AvroCodec
from tests.integration.helpers import read_json, start, stop, tail, wait_for
from tests.integration.lineage import check_lineage, read_lineage

pytestmark = pytest.mark.kafka

FAST = {"update": {"every_records": 1000, "every_seconds": 1.0, "min_records": 50}, "aggregation": {"buffer_size": 2}}


def _max_version(topo) -> int:
    return max((r["version"] for r in read_lineage(topo)), default=0)


def test_bad_records_and_forged_updates_are_rejected_while_everything_keeps_running(
    topology_factory, tmp_path: Path, real_kafka: bool
) -> None:
    from cryptography.hazmat.primitives import serialization

    path, topo = topology_factory("fraud", FAST)
    logs = tmp_path / "logs"
    subprocess_args = ["--topology", str(path)]
    agg = start(
        ["aggregator", *subprocess_args, "--summary-json", str(tmp_path / "agg.json")], logs / "agg.log", tmp_path
    )
    from streamfed.privacy.signing import write_keypair

    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    sites = {
        s.id: start(
            ["site", *subprocess_args, "--site", s.id, "--summary-json", str(tmp_path / f"{s.id}.json")],
            logs / f"{s.id}.log",
            tmp_path,
        )
        for s in topo.sites
    }
    sim = start(["simulate", *subprocess_args, "--rate-scale", "0.5"], logs / "sim.log", tmp_path)
    try:
        wait_for(lambda: _max_version(topo) >= 2, 90, "two versions before the attack")
        target = topo.sites[0]
        codec = AvroCodec("card_transaction")
        good = {
            "transaction_id": "x",
            "site_id": target.id,
            "event_time": 0,
            "amount": 12.5,
            "merchant_category": "fuel",
            "hour": 3,
            "card_present": True,
            "distance_km": 2.0,
            "account_age_days": 10,
            "is_fraud": False,
        }
        prod = make_producer(topo.kafka)
        topic = topo.transactions_topic(target)
        prod.produce(topic, key=b"bad-1", value=b"\x00\x01\x02 not avro at all")
        prod.produce(topic, key=b"bad-2", value=struct.pack(">bI", 0, 424242) + b"\x02x")
        prod.produce(topic, key=b"bad-3", value=codec.encode({**good, "amount": math.nan}))
        prod.produce(topic, key=b"bad-4", value=codec.encode({**good, "hour": 99}))
        prod.produce(topic, key=b"bad-5", value=None)

        # A forged update: right site, right shape, signed by a key the aggregator does not know.
        updates = read_topic(topo.kafka, topo.updates_topic, AvroCodec("model_update"))
        real_msg, real = updates[0]
        priv_pem, _ = generate_keypair()
        forger = SiteSigner(serialization.load_pem_private_key(priv_pem, None))  # type: ignore[arg-type]
        forged = forger.sign({**real, "sequence": 10_000_000})
        ucodec = AvroCodec("model_update")
        prod.produce(topo.updates_topic, key=real["site_id"].encode(), value=ucodec.encode(forged))
        # A replay of a real update, byte for byte.
        prod.produce(topo.updates_topic, key=real_msg.key(), value=real_msg.value())
        prod.flush(10)
        before = _max_version(topo)

        def dead_reasons() -> set[str] | None:
            recs = [r for _, r in read_topic(topo.kafka, topo.dead_letter_topic, AvroCodec("dead_letter"))]
            reasons = {r["reason"] for r in recs if isinstance(r, dict)}
            return reasons if {"decode", "not_finite", "out_of_range"} <= reasons and len(recs) >= 5 else None

        reasons = wait_for(dead_reasons, 60, "dead letters for the five bad records")
        assert {"decode", "not_finite", "out_of_range"} <= reasons

        def rejected() -> set[str] | None:
            recs = [r for _, r in read_topic(topo.kafka, topo.rejected_topic, AvroCodec("dead_letter"))]
            got = {r["reason"] for r in recs if isinstance(r, dict)}
            return got if {"unknown_key", "replay"} <= got else None

        wait_for(rejected, 60, "the forged and the replayed update in the rejected topic")
        wait_for(lambda: _max_version(topo) >= before + 2, 60, "new versions after the attack")
        assert agg.poll() is None and sim.poll() is None
        assert all(p.poll() is None for p in sites.values())
    finally:
        stop(sim)
        codes = {name: stop(p) for name, p in sites.items()}
        codes["aggregator"] = stop(agg)
    assert all(c == 0 for c in codes.values()), f"{codes}\n{tail(logs / 'agg.log')}"
    site_summary = read_json(tmp_path / f"{target.id}.json")
    assert site_summary["dead_letters"] == 5
    assert site_summary["dead_letter_reasons"]["decode"] == 3  # random bytes, unknown schema id, null value
    agg_summary = read_json(tmp_path / "agg.json")
    assert agg_summary["rejected_reasons"].get("unknown_key") == 1
    assert agg_summary["rejected_reasons"].get("replay") == 1
    check_lineage(read_lineage(topo), real_kafka)
