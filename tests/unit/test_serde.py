"""Avro codecs in the Confluent wire format, and parameter vectors <-> bytes."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import numpy as np
import pytest

from streamfed.errors import SchemaError, SerializationError
from streamfed.serde import AvroCodec, SchemaRegistry, params_from_bytes, params_to_bytes, sha256_hex
from streamfed.topology.loader import SCHEMA_DIR

_COST = {
    "site_cpu_seconds": 1.5,
    "site_gpu_seconds": 0.25,
    "aggregator_cpu_seconds": 0.125,
    "gpu_energy_joules_measured": None,
    "energy_joules": 30.0,
    "co2e_grams": 0.003,
}

SAMPLES: dict[str, dict[str, Any]] = {
    "card_transaction": {
        "transaction_id": "bank-a-0001",
        "site_id": "bank-a",
        "event_time": 1_700_000_000_123,
        "amount": 42.17,
        "merchant_category": "fuel",
        "hour": 23,
        "card_present": True,
        "distance_km": 3.5,
        "account_age_days": 812,
        "is_fraud": False,
    },
    "clinical_record": {
        "record_id": "cleveland-7",
        "site_id": "cleveland",
        "event_time": 5,
        "age": 63.0,
        "sex": 1.0,
        "cp": 1.0,
        "trestbps": 145.0,
        "chol": 233.0,
        "fbs": 1.0,
        "restecg": 2.0,
        "thalach": 150.0,
        "exang": 0.0,
        "oldpeak": 2.3,
        "slope": 3.0,
        "ca": None,
        "thal": 6.0,
        "disease": None,
    },
    "model_update": {
        "topology": "fraud",
        "model": "fraud-detector",
        "site_id": "bank-a",
        "sequence": 7,
        "base_version": 3,
        "created_ms": 1_700_000_000_000,
        "num_examples": 2000,
        "num_params": 3,
        "params": np.array([0.5, -1.0, 2.25], dtype="<f4").tobytes(),
        "clip_norm": 1.0,
        "noise_std": 1.9,
        "epsilon_spent": 7.5,
        "delta": 1e-6,
        "first_event_ms": 1_699_999_999_000,
        "cpu_seconds": 0.75,
        "gpu_seconds": 0.0,
        "gpu_energy_joules": None,
        "mechanism": "window_sum",
        "noise_multiplier": 1.0,
        "steps": 1,
        "sampling_rate": 1.0,
        "worker": "w1",
        "key_id": "0123456789abcdef",
        "signature": bytes(range(64)),
    },
    "model_version": {
        "model": "fraud-detector",
        "topology": "fraud",
        "version": 4,
        "parent_version": 3,
        "created_ms": 1_700_000_000_000,
        "dtype": "float32",
        "params": np.arange(3, dtype="<f4").tobytes(),
        "params_sha256": "ab" * 32,
        "layout": [{"name": "online.weights", "shape": [2]}, {"name": "online.intercept", "shape": [1]}],
        "feature_order": ["a", "b"],
        "schema_fingerprint": "00ff",
        "contributions": [
            {
                "site_id": "bank-a",
                "sequence": 7,
                "base_version": 3,
                "num_examples": 2000,
                "staleness": 0,
                "weight": 2000.0,
                "epsilon_spent": 7.5,
                "noise_std": 1.9,
                "clip_norm": 1.0,
                "worker": "",
            }
        ],
        "rule": "mean",
        "server_learning_rate": 1.0,
        "delta": 1e-6,
        "quality": {"auc": 0.91},
        "cost": _COST,
        "producer_id": "streamfed.fraud.aggregator",
        "run_id": "run-1",
    },
    "lineage": {
        "model": "fraud-detector",
        "version": 4,
        "parent_version": 3,
        "created_ms": 1_700_000_000_000,
        "params_sha256": "cd" * 32,
        "updates": [
            {
                "site_id": "bank-a",
                "sequence": 7,
                "base_version": 3,
                "num_examples": 2000,
                "staleness": 1,
                "weight": 1414.2,
                "topic": "streamfed.fraud.updates",
                "partition": 0,
                "offset": 99,
                "published_ms": 1_700_000_000_000,
                "first_event_ms": 1_699_999_999_000,
                "worker": "w1",
            }
        ],
        "cost": {**_COST, "gpu_energy_joules_measured": 12.5},
        "producer_id": "streamfed.fraud.aggregator",
        "run_id": "run-1",
    },
    "dead_letter": {
        "component": "site",
        "site_id": "bank-a",
        "source_topic": "streamfed.fraud.transactions.bank-a",
        "partition": 2,
        "offset": 12345,
        "key": b"bank-a-0001",
        "value": b"\x00\x01\x02",
        "reason": "not_finite",
        "detail": "amount = nan",
        "created_ms": 1,
    },
}
SCHEMAS = sorted(SAMPLES)


@pytest.fixture(params=SCHEMAS)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_every_sample_has_a_schema_file() -> None:
    assert {p.stem for p in SCHEMA_DIR.glob("*.avsc")} >= set(SAMPLES)


def test_round_trip(name: str) -> None:
    codec = AvroCodec(name)
    rec = SAMPLES[name]
    out = codec.decode(codec.encode(rec))
    assert {k: out[k] for k in rec} == rec
    # fields left out of the sample (those with defaults) come back with their defaults
    assert set(out) >= set(rec)


def test_wire_format_header(name: str) -> None:
    codec = AvroCodec(name)
    blob = codec.encode(SAMPLES[name])
    assert blob[0] == 0
    assert struct.unpack(">I", blob[1:5])[0] == codec.schema_id
    assert 0 < codec.schema_id < 2**31


def test_schema_ids_are_stable_and_distinct() -> None:
    ids = {name: AvroCodec(name, SchemaRegistry()).schema_id for name in SCHEMAS}
    assert len(set(ids.values())) == len(ids)
    # a second registry (another process) derives the same ids from the fingerprints
    assert ids == {name: AvroCodec(name, SchemaRegistry()).schema_id for name in SCHEMAS}


@pytest.mark.parametrize("data", [None, b"", b"\x00", b"\x00\x00\x00\x00"], ids=["none", "empty", "1B", "4B"])
def test_decode_too_short(data: bytes | None) -> None:
    with pytest.raises(SerializationError, match="too short"):
        AvroCodec("dead_letter").decode(data)


def test_decode_wrong_magic_byte() -> None:
    codec = AvroCodec("dead_letter")
    blob = bytearray(codec.encode(SAMPLES["dead_letter"]))
    blob[0] = 1
    with pytest.raises(SerializationError, match="magic byte 1"):
        codec.decode(bytes(blob))


def test_decode_unknown_schema_id() -> None:
    codec = AvroCodec("dead_letter")
    body = codec.encode(SAMPLES["dead_letter"])[5:]
    unknown = (codec.schema_id + 1) & 0x7FFFFFFF
    with pytest.raises(SerializationError, match=f"unknown schema id {unknown}"):
        codec.decode(struct.pack(">bI", 0, unknown) + body)


def test_decode_record_of_another_schema_fails() -> None:
    other = AvroCodec("card_transaction").encode(SAMPLES["card_transaction"])
    with pytest.raises(SerializationError, match="does not decode as dead_letter"):
        AvroCodec("dead_letter").decode(other)


@pytest.mark.parametrize("name", ["dead_letter", "card_transaction", "model_update"])
def test_decode_every_truncation_fails(name: str) -> None:
    codec = AvroCodec(name)
    blob = codec.encode(SAMPLES[name])
    for cut in range(5, len(blob)):
        with pytest.raises(SerializationError):
            codec.decode(blob[:cut])


def test_decode_trailing_bytes() -> None:
    codec = AvroCodec("card_transaction")
    blob = codec.encode(SAMPLES["card_transaction"])
    with pytest.raises(SerializationError, match="2 trailing bytes"):
        codec.decode(blob + b"\x00\x00")


def test_decode_resolves_a_registered_older_writer_schema() -> None:
    """A writer from before ``is_fraud`` existed: registered under its id, it decodes with the default."""
    registry = SchemaRegistry()
    doc = json.loads((SCHEMA_DIR / "card_transaction.avsc").read_text())
    doc["fields"] = [f for f in doc["fields"] if f["name"] != "is_fraud"]
    registry.add(4242, doc)
    rec = {k: v for k, v in SAMPLES["card_transaction"].items() if k != "is_fraud"}
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, 4242))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(doc), rec)
    out = AvroCodec("card_transaction", registry).decode(buf.getvalue())
    assert out == {**rec, "is_fraud": None}


@pytest.mark.parametrize("missing", ["transaction_id", "amount", "card_present"])
def test_encode_missing_required_field(missing: str) -> None:
    rec = {k: v for k, v in SAMPLES["card_transaction"].items() if k != missing}
    with pytest.raises(SerializationError, match="card_transaction"):
        AvroCodec("card_transaction").encode(rec)


def test_encode_missing_field_with_default_is_fine() -> None:
    codec = AvroCodec("card_transaction")
    rec = {k: v for k, v in SAMPLES["card_transaction"].items() if k != "is_fraud"}
    assert codec.decode(codec.encode(rec))["is_fraud"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hour", "three"),
        ("transaction_id", None),
        ("transaction_id", 5),
        ("amount", None),
        ("card_present", None),
        ("amount", "12.0"),
        ("hour", 2**40),
    ],
)
def test_encode_wrong_type(field: str, value: Any) -> None:
    rec = {**SAMPLES["card_transaction"], field: value}
    with pytest.raises(SerializationError, match="does not match schema card_transaction"):
        AvroCodec("card_transaction").encode(rec)


def test_unknown_schema_name_lists_the_schemas() -> None:
    with pytest.raises(SchemaError) as info:
        AvroCodec("wire_transfer", SchemaRegistry())
    assert "card_transaction" in str(info.value)
    assert "model_update" in str(info.value)


# -- tensors ------------------------------------------------------------------------------------


def test_params_round_trip_little_endian() -> None:
    vec = np.random.default_rng(0).normal(size=257).astype(np.float32)
    blob = params_to_bytes(vec)
    assert len(blob) == 4 * 257
    assert blob[:4] == struct.pack("<f", float(vec[0]))
    back = params_from_bytes(blob, expected=257)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, vec)
    back[0] = 99.0  # the result is a writable copy, not a view of the bytes
    assert params_from_bytes(blob)[0] == vec[0]


def test_params_to_bytes_casts_to_float32() -> None:
    assert params_to_bytes(np.array([1.0, 2.0], dtype=np.float64)) == struct.pack("<2f", 1.0, 2.0)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_params_from_bytes_rejects_a_partial_float(size: int) -> None:
    with pytest.raises(SerializationError, match="whole number of float32"):
        params_from_bytes(b"\x00" * size)


@pytest.mark.parametrize("expected", [0, 3, 5])
def test_params_from_bytes_rejects_the_wrong_count(expected: int) -> None:
    with pytest.raises(SerializationError, match=f"expected {expected} parameters, got 4"):
        params_from_bytes(params_to_bytes(np.ones(4)), expected=expected)


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _card(**over: object) -> dict:
    rec = {
        "transaction_id": "t1",
        "site_id": "s",
        "event_time": 1,
        "amount": 1.0,
        "merchant_category": "fuel",
        "hour": 1,
        "card_present": True,
        "distance_km": 1.0,
        "account_age_days": 1,
        "is_fraud": None,
    }
    rec.update(over)
    return rec


@pytest.mark.parametrize("byte", [0x02, 0x05, 0xFF])
def test_a_boolean_byte_other_than_0_or_1_does_not_decode(byte: int) -> None:
    codec = AvroCodec("card_transaction")
    blob = bytearray(codec.encode(_card()))
    at = 5 + 3 + 2 + 1 + 8 + 5 + 1  # header, transaction_id, site_id, event_time, amount, category, hour
    assert blob[at] == 0x01  # card_present = True
    blob[at] = byte
    with pytest.raises(SerializationError, match="not valid Avro"):
        codec.decode(bytes(blob))


def test_a_negative_union_index_does_not_decode() -> None:
    codec = AvroCodec("card_transaction")
    blob = bytearray(codec.encode(_card(is_fraud=True)))
    assert blob[-2:] == b"\x02\x01"  # union index 1 (boolean), then True
    blob[-2] = 0x01  # zigzag -1: fastavro alone would read the last branch
    with pytest.raises(SerializationError, match="not valid Avro"):
        codec.decode(bytes(blob))


def test_canonical_records_still_decode() -> None:
    codec = AvroCodec("card_transaction")
    for rec in (_card(), _card(is_fraud=False, card_present=False), _card(is_fraud=True, amount=-0.0)):
        assert codec.decode(codec.encode(rec)) == rec
