"""A site on a real broker with ``kafka.schema_registry``: it learns records that confluent-kafka's own
Avro serializer produced (registry ids, subject of the topic, as a Java or Go producer writes them),
and its updates read back with confluent-kafka's own deserializer. The registry is confluent-kafka's
in-process one (see tests/unit/test_schema_registry.py for why no registry server runs here)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamfed.kafka.topics import provision_topology
from streamfed.privacy.signing import write_keypair
from streamfed.registry import read_topic
from streamfed.serde.avro import AvroCodec
from streamfed.serde.registry import registry_for
from streamfed.site import build_site
from streamfed.sources import TransactionSimulator
from streamfed.topology.loader import SCHEMA_DIR

pytestmark = pytest.mark.kafka

N = 3000


def test_a_site_learns_records_from_confluents_serializer_and_publishes_registry_framed_updates(
    topology_factory,
) -> None:
    url = f"mock://{uuid.uuid4().hex[:8]}"
    _, topo = topology_factory(
        "fraud",
        {"kafka": {"schema_registry": {"url": url}}, "update": {"every_records": 500, "min_records": 50}},
    )
    provision_topology(topo)
    spec = topo.sites[0]
    write_keypair(topo.private_key_path(spec), topo.public_key_path(spec))
    client = registry_for(topo.kafka).client  # type: ignore[attr-defined]
    topic = topo.transactions_topic(spec)
    ser = AvroSerializer(client, (SCHEMA_DIR / "card_transaction.avsc").read_text())
    prod = Producer({"bootstrap.servers": topo.kafka.bootstrap_servers})
    assert spec.simulator is not None
    for rec in TransactionSimulator(spec.id, spec.simulator).batch(N, t=0.0):
        prod.produce(topic, key=rec["transaction_id"], value=ser(rec, SerializationContext(topic, MessageField.VALUE)))
    assert prod.flush(30) == 0

    proc = build_site(topo, spec.id)
    report = proc.run(max_records=N, timeout_s=120)
    assert report.records == N and report.dead_letters == 0
    assert report.updates_published >= 1

    des = AvroDeserializer(client)
    ctx = SerializationContext(topo.updates_topic, MessageField.VALUE)
    update_id = AvroCodec("model_update", registry_for(topo.kafka)).schema_id
    raw = [
        m.value()
        for m, _ in read_topic(topo.kafka, topo.updates_topic, AvroCodec("model_update", registry_for(topo.kafka)))
    ]
    assert len(raw) == report.updates_published
    for value in raw:
        assert int.from_bytes(value[1:5], "big") == update_id
        rec = des(value, ctx)
        assert rec["site_id"] == spec.id and rec["num_examples"] > 0
