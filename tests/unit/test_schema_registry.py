"""Codecs with ``kafka.schema_registry``: ids from the registry, read and written in the framing that
confluent-kafka's own Avro serializer and deserializer use (and Java's and Go's standard ones).

The registry here is confluent-kafka's in-process one (``mock://``): no Confluent-API registry runs
on this machine (no karapace on PyPI; Apicurio is on Maven Central only as a Quarkus module without
a runnable jar; Confluent's own is not on Maven Central).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streamfed.errors import ConfigError, SchemaError, SerializationError
from streamfed.serde.avro import AvroCodec, default_registry
from streamfed.serde.registry import ConfluentSchemaRegistry, registry_for
from streamfed.sources import TransactionSimulator
from streamfed.topology import SimulatorSpec, load_topology
from streamfed.topology.loader import SCHEMA_DIR

SIM = SimulatorSpec(rate=100, seed=3)
CTX = SerializationContext("bank-north.transactions", MessageField.VALUE)


def _registry(tmp_path: Path) -> ConfluentSchemaRegistry:
    url = f"mock://{uuid.uuid4().hex[:8]}"
    topo = load_topology("fraud", {"state_dir": str(tmp_path), "kafka": {"schema_registry": {"url": url}}})
    reg = registry_for(topo.kafka)
    assert isinstance(reg, ConfluentSchemaRegistry) and reg is registry_for(topo.kafka)  # one per url
    return reg


def _records(n: int = 20) -> list[dict[str, Any]]:
    return TransactionSimulator("bank-north", SIM).batch(n, t=0.0)


def test_without_a_registry_ids_stay_local() -> None:
    assert registry_for(load_topology("fraud").kafka) is default_registry()


def test_records_from_confluents_serializer_decode(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    codec = AvroCodec("card_transaction", reg)
    text = (SCHEMA_DIR / "card_transaction.avsc").read_text()
    ser = AvroSerializer(reg.client, text)  # registers under the topic's subject, as Java's would
    for rec in _records():
        data = ser(rec, CTX)
        assert codec.decode(data) == rec


def test_a_writer_schema_that_only_the_registry_knows_is_fetched_and_resolved(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    codec = AvroCodec("card_transaction", reg)
    writer = json.loads((SCHEMA_DIR / "card_transaction.avsc").read_text())
    writer["fields"].append({"name": "channel", "type": "string", "default": "pos"})  # a producer's newer schema
    ser = AvroSerializer(reg.client, json.dumps(writer))
    for rec in _records(5):
        data = ser({**rec, "channel": "web"}, CTX)
        assert int.from_bytes(data[1:5], "big") != codec.schema_id
        assert codec.decode(data) == rec  # resolved to ours: the extra field is dropped


def test_our_records_decode_with_confluents_deserializer_under_the_registrys_id(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    codec = AvroCodec("card_transaction", reg)
    latest = reg.client.get_latest_version("streamfed.records.CardTransaction")
    assert codec.schema_id == latest.schema_id
    des = AvroDeserializer(reg.client)
    for rec in _records():
        data = codec.encode(rec)
        assert data[0] == 0 and int.from_bytes(data[1:5], "big") == latest.schema_id
        assert des(data, CTX) == rec


def test_every_streamfed_schema_registers_and_round_trips(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    dead = AvroCodec("dead_letter", reg)
    letter = {
        "component": "site",
        "site_id": "s",
        "source_topic": "t",
        "partition": 0,
        "offset": 1,
        "key": None,
        "value": b"x",
        "reason": "decode",
        "detail": "",
        "created_ms": 0,
    }
    assert AvroDeserializer(reg.client)(dead.encode(letter), CTX) == letter
    ids = {AvroCodec(n, reg).schema_id for n in ("model_update", "model_version", "lineage", "secagg_message")}
    assert len(ids) == 4


def test_an_id_the_registry_does_not_have_is_a_clear_decode_error(tmp_path: Path) -> None:
    codec = AvroCodec("card_transaction", _registry(tmp_path))
    body = codec.encode(_records(1)[0])[5:]
    with pytest.raises(SerializationError, match="unknown schema id 987654"):
        codec.decode(b"\x00" + (987654).to_bytes(4, "big") + body)


def test_an_unreachable_registry_fails_at_start_naming_it(tmp_path: Path) -> None:
    topo = load_topology(
        "fraud",
        {
            "state_dir": str(tmp_path),
            "kafka": {"schema_registry": {"url": "http://127.0.0.1:9", "config": {"max.retries": 0}}},
        },
    )
    t0 = time.monotonic()
    with pytest.raises(SchemaError, match=r"registry http://127\.0\.0\.1:9 did not register subject"):
        AvroCodec("card_transaction", registry_for(topo.kafka))
    assert time.monotonic() - t0 < 10


def test_a_registry_url_must_name_its_scheme() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.schema_registry\.url"):
        load_topology("fraud", {"kafka": {"schema_registry": {"url": "registry:8081"}}})


def test_reading_schema_registry_schema_type_other_than_avro_is_refused(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    sid = reg.client.register_schema("other", Schema('{"type": "object"}', "JSON"))
    assert reg.by_id(sid) is None
