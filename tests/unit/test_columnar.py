"""Column-at-a-time decoding (AvroCodec.decode_many) gives exactly what decode gives, value by value."""

from __future__ import annotations

import json
import math
import random
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamfed.errors import SerializationError
from streamfed.serde import AvroCodec
from streamfed.serde.columnar import plan
from streamfed.sources import TransactionSimulator
from streamfed.topology import SimulatorSpec
from tests.unit.test_serde import SAMPLES

RECORD_SCHEMAS = ["card_transaction", "bank_record", "clinical_record", "air_quality_record"]


def _one_by_one(codec: AvroCodec, values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        try:
            out.append(codec.decode(v))
        except SerializationError as exc:
            out.append(exc)
    return out


def _same(got: list[Any], want: list[Any]) -> None:
    """Equal records with equal value types, or errors with equal text (object addresses aside)."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if isinstance(w, SerializationError):
            assert isinstance(g, SerializationError), (i, g, w)
            assert re.sub("0x[0-9a-f]+", "@", str(g)) == re.sub("0x[0-9a-f]+", "@", str(w)), i
        else:
            assert g == w or _nan_equal(g, w), (i, g, w)
            assert {k: type(v) for k, v in g.items()} == {k: type(v) for k, v in w.items()}, i


def _nan_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def _cards(n: int, seed: int = 3) -> list[dict[str, Any]]:
    sim = TransactionSimulator("bank-a", SimulatorSpec(rate=100, fraud_rate=0.05, seed=seed))
    return sim.batch(n, t=0.0)


def _value(rnd: random.Random, t: Any) -> Any:
    if isinstance(t, list):
        return _value(rnd, rnd.choice(t))
    return {
        "null": None,
        "boolean": rnd.random() < 0.5,
        "int": rnd.randrange(-(2**31), 2**31),
        "long": rnd.randrange(-(2**63), 2**63),
        "double": rnd.uniform(-1e6, 1e6),
        "string": rnd.choice(["", "yes", "no", "NNW", "Wanliu", "ü" * rnd.randrange(3)]),
    }[t]


@pytest.mark.parametrize("name", RECORD_SCHEMAS)
def test_every_record_schema_is_read_by_columns(name: str) -> None:
    codec = AvroCodec(name)
    assert plan(codec.schema) is not None
    rnd = random.Random(name)
    recs = [{f["name"]: _value(rnd, f["type"]) for f in codec.schema["fields"]} for _ in range(200)]
    values = [codec.encode(r) for r in recs]
    records, unread = codec._batch_decoder().decode(values)
    assert not unread.any()
    _same(records, _one_by_one(codec, values))
    assert records == recs
    columns = codec.decode_columns(values)  # the same values as columns, arrays for booleans and numbers
    assert columns is not None and list(columns) == [f["name"] for f in codec.schema["fields"]]
    for field, col in columns.items():
        got = col.tolist() if isinstance(col, np.ndarray) else col
        assert got == [r[field] for r in recs], field
        assert [type(v) for v in got] == [type(r[field]) for r in recs], field
    assert codec.decode_columns([*values[:5], b"\x00junk"]) is None  # not every value read: no columns


def test_simulated_transactions_decode_as_one_by_one() -> None:
    codec = AvroCodec("card_transaction")
    values = [codec.encode(r) for r in _cards(3000)]
    records, unread = codec._batch_decoder().decode(values)
    assert not unread.any()
    _same(records, _one_by_one(codec, values))


def _mutate(rnd: random.Random, value: bytes) -> bytes:
    b = bytearray(value)
    for _ in range(rnd.randint(1, 3)):
        op = rnd.random()
        if op < 0.5:
            b[rnd.randrange(len(b))] = rnd.choice([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, rnd.randrange(256)])
        elif op < 0.7 and len(b) > 1:
            del b[rnd.randrange(1, len(b)) :]
        elif op < 0.85:
            b.insert(rnd.randrange(len(b) + 1), rnd.randrange(256))
        else:
            b += bytes([rnd.randrange(256)])
    return bytes(b)


@pytest.mark.parametrize("seed", range(4))
def test_damaged_bodies_get_the_errors_of_decode_and_the_rest_still_decode(seed: int) -> None:
    codec = AvroCodec("card_transaction")
    rnd = random.Random(seed)
    good = [codec.encode(r) for r in _cards(400, seed)]
    values: list[Any] = [_mutate(rnd, v) if rnd.random() < 0.5 else v for v in good]
    values[7] = None
    values[8] = b"\x00\x01"
    got = codec.decode_many(values)
    _same(got, _one_by_one(codec, values))
    assert sum(isinstance(g, SerializationError) for g in got) > 100  # damage is mostly caught
    intact = [v for v, g in zip(values, good, strict=True) if v == g]
    _, unread = codec._batch_decoder().decode(intact)
    assert not unread.any()  # the damaged ones did not push the intact ones off the column path


def _card_blob(codec: AvroCodec, **over: Any) -> bytearray:
    return bytearray(codec.encode({**SAMPLES["card_transaction"], **over}))


def test_non_canonical_bytes_are_refused_as_decode_refuses_them() -> None:
    codec = AvroCodec("card_transaction")
    at_bool = 5 + 1 + len("bank-a-0001") + 1 + len("bank-a") + 6 + 8 + 1 + len("fuel") + 1
    cases = {}
    blob = _card_blob(codec)
    assert blob[at_bool] == 0x01
    blob[at_bool] = 0x02  # a boolean other than 0/1
    cases["boolean 2"] = bytes(blob)
    blob = _card_blob(codec, is_fraud=True)
    blob[-2] = 0x01  # union index -1
    cases["negative union index"] = bytes(blob)
    blob = _card_blob(codec, is_fraud=True)
    blob[-2] = 0x04  # union index 2 of 2 branches
    cases["union index out of range"] = bytes(blob)
    blob = _card_blob(codec)
    at_len = 5
    cases["non-minimal string length"] = (
        bytes(blob[:at_len]) + bytes([blob[at_len] | 0x80, 0x00]) + bytes(blob[at_len + 1 :])
    )
    cases["trailing byte"] = bytes(_card_blob(codec)) + b"\x00"
    cases["truncated"] = bytes(_card_blob(codec))[:-1]
    cases["another schema id"] = b"\x00" + struct.pack(">I", 12345) + bytes(_card_blob(codec))[5:]
    values = [codec.encode(SAMPLES["card_transaction"]), *cases.values()]
    _, unread = codec._batch_decoder().decode(values)
    assert unread.tolist() == [False] + [True] * len(cases)
    got = codec.decode_many(values)
    _same(got, _one_by_one(codec, values))
    assert all(isinstance(g, SerializationError) for g in got[1:]), dict(zip(cases, got[1:], strict=True))


def test_a_varint_over_its_width_is_not_read_by_columns() -> None:
    codec = AvroCodec("card_transaction")
    base = _card_blob(codec)
    # hour (an int) written with 6 bytes: more than an int's 5
    at_hour = 5 + 1 + len("bank-a-0001") + 1 + len("bank-a") + 6 + 8 + 1 + len("fuel")
    assert base[at_hour] == 46  # zigzag 23
    long_hour = bytes(base[:at_hour]) + bytes([0xAE, 0x80, 0x80, 0x80, 0x80, 0x01]) + bytes(base[at_hour + 1 :])
    _, unread = codec._batch_decoder().decode([bytes(base), long_hour])
    assert unread.tolist() == [False, True]
    _same(codec.decode_many([bytes(base), long_hour]), _one_by_one(codec, [bytes(base), long_hour]))


def test_every_kind_of_flat_field(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Every",
        "fields": [
            {"name": "s", "type": "string"},
            {"name": "b", "type": "bytes"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "t", "type": "boolean"},
            {"name": "n", "type": "null"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
            {"name": "x", "type": {"type": "fixed", "name": "X", "size": 3}},
            {"name": "u", "type": ["null", "string", "long", "double"]},
        ],
    }
    path = tmp_path / "every.avsc"
    path.write_text(json.dumps(schema))
    codec = AvroCodec(str(path))
    rnd = random.Random(5)
    recs = [
        {
            "s": rnd.choice(["", "é", "a" * 200, "zürich"]),
            "b": bytes(rnd.randrange(256) for _ in range(rnd.randrange(5))),
            "f": rnd.choice([0.5, -1.25, float("inf")]),
            "d": rnd.uniform(-1e300, 1e300),
            "i": rnd.choice([0, -1, 2**31 - 1, -(2**31)]),
            "l": rnd.choice([0, 63, -64, 64, 2**63 - 1, -(2**63)]),
            "t": rnd.random() < 0.5,
            "n": None,
            "e": rnd.choice("ABC"),
            "x": bytes(rnd.randrange(256) for _ in range(3)),
            "u": rnd.choice([None, "z", 2**40, -3.5]),
        }
        for _ in range(300)
    ]
    values = [codec.encode(r) for r in recs]
    records, unread = codec._batch_decoder().decode(values)
    assert not unread.any()
    _same(records, _one_by_one(codec, values))
    assert records == recs
    bad = bytearray(values[0])
    bad[5] = 0xFF  # string length varint not terminated inside the record, or huge
    _same(codec.decode_many([values[1], bytes(bad)]), _one_by_one(codec, [values[1], bytes(bad)]))


def test_schemas_outside_the_flat_subset_keep_the_one_by_one_path() -> None:
    for name in ("model_update", "model_version", "lineage"):
        codec = AvroCodec(name)
        if plan(codec.schema) is None:
            assert codec._batch_decoder() is None
    for t in ({"type": "array", "items": "int"}, {"type": "long", "logicalType": "timestamp-millis"}):
        assert plan({"type": "record", "name": "R", "fields": [{"name": "a", "type": t}]}) is None
