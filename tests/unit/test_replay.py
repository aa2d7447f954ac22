"""Replay of real data files: the heart sources, missing values, label rules and row filters."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamfed.errors import ConfigError
from streamfed.serde import AvroCodec
from streamfed.sources import read_source_rows
from streamfed.topology import SourceSpec, load_topology
from streamfed.topology.loader import schema_fields

CARD_FIELDS = schema_fields("card_transaction")
HEART_FIELDS = schema_fields("clinical_record")


@pytest.fixture(scope="module")
def heart_rows() -> dict[str, list[dict[str, Any]]]:
    topo = load_topology("heart")
    out = {}
    for site in topo.sites:
        assert site.source is not None
        out[site.id] = list(read_source_rows(site.source, site.id, HEART_FIELDS, "disease", "record_id"))
    return out


def test_heart_row_counts(heart_rows: dict[str, list[dict[str, Any]]]) -> None:
    counts = {site: len(rows) for site, rows in heart_rows.items()}
    assert counts == {"cleveland": 303, "budapest": 294, "zurich-basel": 123, "va-long-beach": 200}


def test_heart_labels_are_booleans_with_the_documented_rates(heart_rows: dict[str, list[dict[str, Any]]]) -> None:
    rates = {}
    for site, rows in heart_rows.items():
        labels = [r["disease"] for r in rows]
        assert all(isinstance(v, bool) for v in labels), site
        rates[site] = float(np.mean(labels))
    assert rates["cleveland"] == pytest.approx(0.46, abs=0.02)
    assert rates["zurich-basel"] == pytest.approx(0.94, abs=0.02)
    # "positive rates range from 36% to 94%"
    assert rates["budapest"] == pytest.approx(0.36, abs=0.02)
    assert rates["budapest"] < rates["cleveland"] < rates["va-long-beach"] < rates["zurich-basel"]


def test_heart_missing_values_become_none(heart_rows: dict[str, list[dict[str, Any]]]) -> None:
    cleveland = heart_rows["cleveland"]
    assert sum(r["ca"] is None for r in cleveland) == 4  # '?' in the file
    assert sum(r["thal"] is None for r in cleveland) == 2
    assert all(r["age"] is not None and isinstance(r["age"], float) for r in cleveland)
    # the Swiss file has no cholesterol measurements at all (recorded as 0), and many '?'
    assert sum(r["ca"] is None for r in heart_rows["zurich-basel"]) > 100


def test_heart_records_encode_and_are_shuffled(heart_rows: dict[str, list[dict[str, Any]]]) -> None:
    codec = AvroCodec("clinical_record")
    rows = heart_rows["cleveland"]
    for rec in rows:
        assert codec.decode(codec.encode(rec)) == rec
    assert {r["site_id"] for r in rows} == {"cleveland"}
    assert len({r["record_id"] for r in rows}) == 303
    assert "num" not in rows[0]  # the label column is not a record field
    # shuffle_seed 7: the first replayed row is not the file's first row (63, 1, 1, 145, ...)
    assert (rows[0]["age"], rows[0]["chol"]) != (63.0, 233.0)


def test_shuffle_is_deterministic() -> None:
    spec = load_topology("heart").site("cleveland").source
    assert spec is not None
    first = list(read_source_rows(spec, "c", HEART_FIELDS, "disease", "record_id"))
    again = list(read_source_rows(spec, "c", HEART_FIELDS, "disease", "record_id"))
    assert first == again


CSV = """tx,amount,category,hour,present,dist,age,label,region
a,10.5,fuel,3,1,1.0,100,yes,north
b,20,travel,4,0,2.5,200,no,south
c,30,grocery,5,true,3.0,300,yes,north
d,40,fuel,6,0,4.0,400,?,east
"""


def _spec(tmp_path: Path, text: str = CSV, name: str = "tx.csv", **kw: Any) -> SourceSpec:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    base: dict[str, Any] = {
        "path": path,
        "label_column": "label",
        "label_positive": ["yes"],
        "fields": {
            "merchant_category": "category",
            "card_present": "present",
            "distance_km": "dist",
            "account_age_days": "age",
        },
    }
    base.update(kw)
    return SourceSpec(**base)


def _rows(spec: SourceSpec) -> list[dict[str, Any]]:
    return list(read_source_rows(spec, "s1", CARD_FIELDS, "is_fraud", "transaction_id"))


def test_csv_with_header_maps_and_converts(tmp_path: Path) -> None:
    rows = _rows(_spec(tmp_path))
    assert len(rows) == 4
    assert [r["card_present"] for r in rows] == [True, False, True, False]
    assert [r["is_fraud"] for r in rows] == [True, False, True, None]  # '?' label -> None
    assert [r["amount"] for r in rows] == [10.5, 20.0, 30.0, 40.0]
    assert rows[0] == {
        "transaction_id": "s1-0",
        "site_id": "s1",
        "event_time": 0,
        "amount": 10.5,
        "merchant_category": "fuel",
        "hour": 3,
        "card_present": True,
        "distance_km": 1.0,
        "account_age_days": 100,
        "is_fraud": True,
    }


def test_where_keeps_only_matching_rows(tmp_path: Path) -> None:
    spec = _spec(tmp_path, where={"region": ["north"]})
    rows = _rows(spec)
    assert [r["merchant_category"] for r in rows] == ["fuel", "grocery"]
    assert [r["is_fraud"] for r in rows] == [True, True]
    spec = _spec(tmp_path, where={"region": ["south", "east"]})
    rows = _rows(spec)
    assert [r["merchant_category"] for r in rows] == ["travel", "fuel"]
    assert [r["is_fraud"] for r in rows] == [False, None]  # '?' label -> None


def test_label_threshold(tmp_path: Path) -> None:
    text = "amount,score\n1,0\n2,0.5\n3,2\n"
    spec = _spec(tmp_path, text=text, label_column="score", label_positive=None, label_threshold=0.4, fields={})
    rows = list(read_source_rows(spec, "s", HEART_FIELDS | {"amount": "double"}, "is_fraud", "transaction_id"))
    assert [r["is_fraud"] for r in rows] == [False, True, True]


@pytest.mark.parametrize(
    "kw",
    [
        {"where": {"country": ["x"]}},
        {"label_column": "fraud_flag"},
        {"fields": {"merchant_category": "merchant"}},
    ],
    ids=["where", "label", "fields"],
)
def test_unknown_column_raises(tmp_path: Path, kw: dict[str, Any]) -> None:
    spec = _spec(tmp_path, **kw)
    missing = next(iter(kw["where"])) if "where" in kw else kw.get("label_column") or "merchant"
    with pytest.raises(ConfigError, match=f"no column '{missing}'") as info:
        _rows(spec)
    assert "columns: tx, amount, category" in str(info.value)


def test_missing_value_in_a_non_nullable_field_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="amount is not nullable"):
        _rows(_spec(tmp_path, text=CSV.replace("30,grocery", "?,grocery")))


def test_headerless_file_with_columns_and_drop_columns(tmp_path: Path) -> None:
    text = "1.5,fuel,9\n2.5,travel,0\n"
    spec = _spec(
        tmp_path,
        text=text,
        header=False,
        columns=["amount", "merchant_category", "label"],
        label_positive=None,
        label_threshold=0,
        fields={},
        drop_columns=["merchant_category"],
    )
    rows = _rows(spec)
    assert [r["amount"] for r in rows] == [1.5, 2.5]
    assert [r["is_fraud"] for r in rows] == [True, False]
    assert "merchant_category" not in rows[0]


def test_gzip_and_separator(tmp_path: Path) -> None:
    text = "amount;label\n7;yes\n8;no\n"
    spec = _spec(tmp_path, text=text, name="tx.csv.gz", separator=";", fields={})
    rows = _rows(spec)
    assert [(r["amount"], r["is_fraud"]) for r in rows] == [(7.0, True), (8.0, False)]


def test_missing_file_raises(tmp_path: Path) -> None:
    spec = SourceSpec(path=tmp_path / "absent.csv", label_column="label", label_positive=["yes"])
    with pytest.raises(ConfigError, match="does not exist"):
        _rows(spec)


def test_label_lead_takes_the_label_from_a_later_row(tmp_path: Path) -> None:
    path = tmp_path / "hourly.csv"
    path.write_text("hour,PM2.5\n0,10\n1,80\n2,NA\n3,90\n")
    spec = SourceSpec(path=path, fields={"pm25": "PM2.5"}, label_column="PM2.5", label_threshold=75, label_lead=1)
    fields = {"record_id": "string", "hour": ["null", "double"], "pm25": ["null", "double"], "high": "boolean"}
    recs = list(read_source_rows(spec, "s", fields, "high", "record_id"))
    assert [r["pm25"] for r in recs] == [10.0, 80.0, None, 90.0]
    assert [r["high"] for r in recs] == [True, None, True, None]  # next hour's value; none after the last


def test_label_lead_refuses_a_shuffled_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label_lead"):
        SourceSpec(path=tmp_path / "x.csv", label_column="y", label_threshold=0, label_lead=1, shuffle_seed=3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("1.0", True), ("0.0", False), ("0", False), ("yes", True), ("N", False), ("true", True)],
)
def test_boolean_cells_read_as_written(text: str, expected: bool) -> None:
    from streamfed.sources.replay import _convert

    assert _convert(text, ["null", "boolean"], set(), "flag") is expected


def test_a_cell_that_is_no_boolean_is_a_config_error() -> None:
    from streamfed.errors import ConfigError
    from streamfed.sources.replay import _convert

    with pytest.raises(ConfigError, match="flag"):
        _convert("maybe", ["null", "boolean"], set(), "flag")
