"""Data never leaves a site: no raw record value appears in any byte on the updates or models topics."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import numpy as np
import pytest

from streamfed.privacy.signing import write_keypair
from streamfed.registry import read_topic
from streamfed.serde.avro import HEADER, AvroCodec
from streamfed.serde.tensors import params_from_bytes
from streamfed.sources import RecordProducer
from tests.integration.helpers import start, stop, wait_for

pytestmark = pytest.mark.kafka


def test_no_raw_record_value_reaches_updates_or_models(topology_factory, tmp_path: Path) -> None:
    path, topo = topology_factory("fraud", {"update": {"every_records": 500, "every_seconds": 1.0, "min_records": 50}})
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    site = topo.sites[0]
    tag = uuid.uuid4().hex[:12]
    codec = AvroCodec("card_transaction")
    cats = topo.model.features.categorical[0].values
    records = [
        {
            "transaction_id": f"CANARY-{tag}-{i}",
            "site_id": site.id,
            "event_time": 1_700_000_000_000 + i,
            "amount": 1000.0 + i * 0.37 + 0.123456789,
            "merchant_category": cats[i % len(cats)],
            "hour": i % 24,
            "card_present": i % 3 == 0,
            "distance_km": 7.0 + i * 0.011,
            "account_age_days": 100 + i,
            "is_fraud": i % 17 == 0,
        }
        for i in range(4000)
    ]
    out = RecordProducer(topo.kafka, "card_transaction", topo.name, "transaction_id")
    args = ["--topology", str(path)]
    agg = start(["aggregator", *args], tmp_path / "agg.log", tmp_path)
    proc = start(["site", *args, "--site", site.id], tmp_path / "site.log", tmp_path)
    try:
        out.send(topo.transactions_topic(site), site.id, records)
        out.flush()
        wait_for(lambda: len(read_topic(topo.kafka, topo.models_topic, None)) >= 3, 120, "two new versions")
    finally:
        stop(proc)
        stop(agg)
    blobs = [v for _, v in read_topic(topo.kafka, topo.updates_topic, None) if isinstance(v, bytes)]
    blobs += [v for _, v in read_topic(topo.kafka, topo.models_topic, None) if isinstance(v, bytes)]
    blobs += [v for _, v in read_topic(topo.kafka, topo.lineage_topic, None) if isinstance(v, bytes)]
    assert len(blobs) >= 6
    haystack = b"\n".join(blobs)
    needles: list[tuple[str, bytes]] = []
    for r in records:
        needles.append(("transaction id", r["transaction_id"].encode()))
        body = codec.encode(r)[HEADER.size :]
        needles.append(("avro body", body))
        for field in ("amount", "distance_km"):
            for fmt in ("<d", ">d"):
                needles.append((f"{field} as {fmt}", struct.pack(fmt, r[field])))
    assert b"CANARY" not in haystack
    leaks = [(what, n) for what, n in needles if n in haystack]
    assert not leaks, f"{len(leaks)} raw values found on federation topics, e.g. {leaks[:3]}"
    # A raw value as float32 would sit among the parameters: 4 bytes anywhere in the records (the
    # signatures alone are hundreds of random bytes) match one of 16,000 needles by chance a few
    # times in a hundred runs, so float32 values are looked for where a leak would put them.
    params = [
        AvroCodec("model_update").decode(v)["params"] for _, v in read_topic(topo.kafka, topo.updates_topic, None)
    ]
    params += [
        AvroCodec("model_version").decode(v)["params"] for _, v in read_topic(topo.kafka, topo.models_topic, None)
    ]
    values = np.concatenate([params_from_bytes(b) for b in params])
    raw32 = np.array([r[f] for r in records for f in ("amount", "distance_km")], dtype=np.float32)
    assert values.size > 1000 and not np.isin(values, raw32).any()
    # The check can fail: the same bytes are found in the site's own transaction topic.
    raw = b"\n".join(v for _, v in read_topic(topo.kafka, topo.transactions_topic(site), None) if isinstance(v, bytes))
    assert sum(n in raw for _, n in needles[:50]) >= 20
