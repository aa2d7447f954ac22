"""100k hostile records on a site topic: no crash, every bad one dead-lettered with its reason,
the good ones in between learned from."""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from streamfed.kafka.clients import producer_config
from streamfed.kafka.topics import provision_topology
from streamfed.privacy.signing import write_keypair
from streamfed.registry import read_topic
from streamfed.serde.avro import AvroCodec
from streamfed.site import build_site

pytestmark = [pytest.mark.kafka, pytest.mark.reliability]

TOTAL = int(os.environ.get("STREAMFED_FUZZ_RECORDS", "100000"))
GOOD = {
    "transaction_id": "t",
    "site_id": "bank-north",
    "event_time": 0,
    "amount": 42.0,
    "merchant_category": "grocery",
    "hour": 13,
    "card_present": True,
    "distance_km": 3.0,
    "account_age_days": 400,
    "is_fraud": False,
}


def _records(rng: np.random.Generator, codec: AvroCodec, other: AvroCodec) -> list[tuple[bytes | None, str | None]]:
    """(value, expected dead-letter reason or None for a good record) for TOTAL records."""
    good = codec.encode(GOOD)
    kinds = [
        "good",
        "good_unlabelled",
        "good_unknown_category",
        "random",
        "empty",
        "null",
        "bad_magic",
        "unknown_schema",
        "other_schema",
        "truncated",
        "trailing",
        "nan",
        "inf",
        "huge",
        "negative",
        "hour",
        "boolean_byte",
        "union_minus_one",
        "other_site",
        "duplicate",
    ]
    out: list[tuple[bytes | None, str | None]] = []
    repeated = False
    for i, kind in enumerate(rng.choice(kinds, size=TOTAL)):
        rec: dict[str, Any] = {**GOOD, "transaction_id": f"t{i}", "is_fraud": bool(rng.random() < 0.1)}
        if kind == "good":
            out.append((codec.encode(rec), None))
        elif kind == "good_unlabelled":
            out.append((codec.encode({**rec, "is_fraud": None}), None))
        elif kind == "good_unknown_category":
            out.append((codec.encode({**rec, "merchant_category": "submarines"}), None))
        elif kind == "random":
            out.append((rng.bytes(int(rng.integers(1, 200))), "decode"))
        elif kind == "empty":
            out.append((b"", "decode"))
        elif kind == "null":
            out.append((None, "decode"))
        elif kind == "bad_magic":
            out.append((b"\x07" + good[1:], "decode"))
        elif kind == "unknown_schema":
            out.append((struct.pack(">bI", 0, int(rng.integers(0, 2**31))) + good[5:], "decode"))
        elif kind == "other_schema":  # a known schema, of the wrong type for this topic
            out.append((_wrong_type(other), "decode"))
        elif kind == "truncated":
            full = codec.encode(rec)
            out.append((full[: int(rng.integers(5, len(full) - 1))], "decode"))
        elif kind == "trailing":
            out.append((codec.encode(rec) + b"\x00\x01", "decode"))
        elif kind == "nan":
            out.append((codec.encode({**rec, "amount": math.nan}), "not_finite"))
        elif kind == "inf":
            out.append((codec.encode({**rec, "distance_km": -math.inf}), "not_finite"))
        elif kind == "huge":
            out.append((codec.encode({**rec, "amount": 1e300}), "out_of_range"))
        elif kind == "negative":
            out.append((codec.encode({**rec, "account_age_days": -(2**31)}), "out_of_range"))
        elif kind == "boolean_byte":  # card_present written as 0x05: fastavro alone reads True
            yes, no = codec.encode({**rec, "card_present": True}), codec.encode({**rec, "card_present": False})
            at = next(j for j, (a, b) in enumerate(zip(yes, no, strict=True)) if a != b)
            blob = bytearray(yes)
            blob[at] = int(rng.choice([0x02, 0x05, 0x7F]))
            out.append((bytes(blob), "decode"))
        elif kind == "union_minus_one":  # label union index -1: fastavro alone reads the last branch
            blob = bytearray(codec.encode({**rec, "is_fraud": True}))
            blob[-2] = 0x01
            out.append((bytes(blob), "decode"))
        elif kind == "other_site":
            name = str(rng.choice(["bank-south", "", "../bank-north"]))
            out.append((codec.encode({**rec, "site_id": name}), "wrong_site"))
        elif kind == "duplicate":  # the first one is learnt, every later one is a duplicate
            out.append((codec.encode({**rec, "transaction_id": "t-repeated"}), "duplicate" if repeated else None))
            repeated = True
        else:
            out.append((codec.encode({**rec, "hour": int(rng.choice([24, 99, -1, 2**31 - 1]))}), "out_of_range"))
    # A few oversize messages (several MB of noise) at random places.
    for _ in range(5):
        out.insert(int(rng.integers(0, len(out))), (rng.bytes(3_000_000), "decode"))
    return out


def _wrong_type(other: AvroCodec) -> bytes:
    """A dead-letter record: a valid message of another registered schema."""
    return other.encode(
        {
            "component": "x",
            "site_id": None,
            "source_topic": "t",
            "partition": 0,
            "offset": 0,
            "key": None,
            "value": None,
            "reason": "r",
            "detail": "d",
            "created_ms": 0,
        }
    )


def test_hundred_thousand_hostile_records_are_dead_lettered_and_the_good_ones_learned(
    topology_factory, tmp_path: Path
) -> None:
    _, topo = topology_factory(
        "fraud",
        {
            "update": {"every_records": 2000, "every_seconds": 1.0, "min_records": 50},
            "kafka": {"max_message_bytes": 8 << 20},
            "model": {"deep": {"enabled": False}},
        },
    )
    provision_topology(topo)
    site = topo.sites[0]
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    codec, other = AvroCodec("card_transaction"), AvroCodec("dead_letter")
    records = _records(np.random.default_rng(6), codec, other)
    expected = Counter(reason for _, reason in records if reason is not None)
    good = sum(1 for _, reason in records if reason is None)

    prod = Producer(producer_config(topo.kafka))
    topic = topo.transactions_topic(site)
    for i, (value, _) in enumerate(records):
        while True:
            try:
                prod.produce(topic, key=str(i).encode(), value=value)
                break
            except BufferError:
                prod.poll(0.05)
    assert prod.flush(60) == 0

    proc = build_site(topo, site.id)
    report = proc.run(max_records=len(records), timeout_s=240)
    assert report.records + report.dead_letters == len(records), report.to_json()
    assert report.records == good
    assert report.dead_letters == sum(expected.values())
    assert report.dead_letter_reasons == dict(expected)
    labelled = sum(1 for v, r in records if r is None and codec.decode(v)["is_fraud"] is not None)
    assert report.labelled == labelled
    assert report.updates_published >= 1  # the good records were learned and released
    assert report.updates_pending == 0

    letters = [r for _, r in read_topic(topo.kafka, topo.dead_letter_topic, other, timeout_s=120)]
    assert all(isinstance(r, dict) for r in letters)
    got = Counter(r["reason"] for r in letters if isinstance(r, dict))
    assert got == expected
    assert all(r["detail"] for r in letters if isinstance(r, dict))
