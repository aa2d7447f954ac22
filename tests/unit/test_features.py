"""Featurizer: records -> float32 rows in the shared feature order, bad records flagged by reason."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from streamfed.learners.features import Featurizer, RecordError
from streamfed.topology import FeatureSpec, NumericFeature, load_topology

CATEGORIES = ["grocery", "fuel", "restaurant", "online_retail", "electronics", "travel", "pharmacy", "entertainment"]


@pytest.fixture(scope="module")
def fraud() -> Featurizer:
    topo = load_topology("fraud")
    return Featurizer(topo.model.features, topo.model.label)


def _rec(**changes: Any) -> dict[str, Any]:
    rec = {
        "transaction_id": "t-1",
        "site_id": "bank-a",
        "event_time": 0,
        "amount": 120.0,
        "merchant_category": "travel",
        "hour": 6,
        "card_present": False,
        "distance_km": 12.5,
        "account_age_days": 365,
        "is_fraud": True,
    }
    rec.update(changes)
    return rec


def test_shape_and_order_follow_the_spec(fraud: Featurizer) -> None:
    names = load_topology("fraud").model.features.names()
    assert fraud.names == names
    assert fraud.dim == len(names) == 14
    assert names[:5] == ["amount", "hour_sin", "hour_cos", "distance_km", "account_age_days"]
    assert names[5:13] == [f"merchant_category={c}" for c in CATEGORIES]
    assert names[13] == "card_present"
    X, y, status = fraud.transform([_rec(), _rec(is_fraud=False)])
    assert X.shape == (2, 14) and X.dtype == np.float32
    assert y.dtype == np.float32
    assert y.tolist() == [1.0, 0.0]
    assert status == [True, True]


def test_values_of_a_row(fraud: Featurizer) -> None:
    X, _, _ = fraud.transform([_rec()])
    row = dict(zip(fraud.names, X[0].tolist(), strict=True))
    assert row["amount"] == pytest.approx((math.log1p(120.0) - 3.9) / 1.0, rel=1e-6)
    assert row["distance_km"] == pytest.approx((math.log1p(12.5) - 1.8) / 1.0, rel=1e-6)
    assert row["account_age_days"] == pytest.approx((math.log1p(365) - 6.5) / 1.2, rel=1e-6)
    assert row["hour_sin"] == pytest.approx(1.0, abs=1e-6)  # 6 h is a quarter of the day
    assert row["hour_cos"] == pytest.approx(0.0, abs=1e-6)
    one_hot = [row[f"merchant_category={c}"] for c in CATEGORIES]
    assert one_hot == [0, 0, 0, 0, 0, 1, 0, 0]
    assert row["card_present"] == 0.0


@pytest.mark.parametrize("hour", [0, 5, 13, 23])
def test_cyclic_hour_is_sin_and_cos(fraud: Featurizer, hour: int) -> None:
    X, _, _ = fraud.transform([_rec(hour=hour)])
    angle = 2 * math.pi * hour / 24
    assert X[0, 1] == pytest.approx(math.sin(angle), abs=1e-6)
    assert X[0, 2] == pytest.approx(math.cos(angle), abs=1e-6)
    assert X[0, 1] ** 2 + X[0, 2] ** 2 == pytest.approx(1.0, abs=1e-6)


def test_cyclic_wraps_around() -> None:
    f = Featurizer(FeatureSpec(numeric=[NumericFeature(name="h", transform="cyclic", period=24)]), label="y")
    X, _, _ = f.transform([{"h": 1.0}, {"h": 25.0}])
    np.testing.assert_allclose(X[0], X[1], atol=1e-6)


def test_log1p_with_center_and_scale() -> None:
    spec = FeatureSpec(numeric=[NumericFeature(name="v", transform="log1p", center=2.0, scale=0.5)])
    X, _, status = Featurizer(spec, label="y").transform([{"v": 0.0}, {"v": math.e - 1}, {"v": 99.0}])
    assert status == [True, True, True]
    np.testing.assert_allclose(X[:, 0], [(0 - 2) / 0.5, (1 - 2) / 0.5, (math.log(100) - 2) / 0.5], rtol=1e-6)


def test_identity_with_center_and_scale_and_an_int_value() -> None:
    spec = FeatureSpec(numeric=[NumericFeature(name="v", center=10.0, scale=4.0)])
    X, _, _ = Featurizer(spec, label="y").transform([{"v": 18}, {"v": 2.0}])
    assert X[:, 0].tolist() == [2.0, -2.0]


def test_unknown_category_encodes_as_zeros(fraud: Featurizer) -> None:
    X, _, status = fraud.transform([_rec(merchant_category="casino")])
    assert status == [True]
    assert X[0, 5:13].tolist() == [0.0] * 8
    assert X[0, 0] != 0.0  # the rest of the row is still there


def test_card_present_true(fraud: Featurizer) -> None:
    X, _, _ = fraud.transform([_rec(card_present=True)])
    assert X[0, 13] == 1.0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"amount": float("nan")}, "not_finite"),
        ({"distance_km": float("inf")}, "not_finite"),
        ({"amount": "12.0"}, "wrong_type"),
        ({"amount": True}, "wrong_type"),
        ({"merchant_category": 3}, "wrong_type"),
        ({"card_present": 1}, "wrong_type"),
        ({"is_fraud": 1}, "wrong_type"),
        ({"hour": 24}, "out_of_range"),
        ({"amount": -0.01}, "out_of_range"),
        ({"account_age_days": 40001}, "out_of_range"),
        ({"amount": None}, "missing_value"),
        ({"merchant_category": None}, "wrong_type"),
    ],
)
def test_bad_records_get_a_reason_and_a_zero_row(fraud: Featurizer, changes: dict[str, Any], reason: str) -> None:
    X, _, status = fraud.transform([_rec(), _rec(**changes), _rec()])
    assert status[0] is True and status[2] is True
    assert isinstance(status[1], str)
    assert status[1].startswith(f"{reason}: ")
    field = next(iter(changes))
    assert field in status[1]
    assert X[1].tolist() == [0.0] * fraud.dim
    np.testing.assert_array_equal(X[0], X[2])  # neighbours are unaffected
    assert X[0].any()


def test_row_raises_record_error_with_reason(fraud: Featurizer) -> None:
    with pytest.raises(RecordError) as info:
        fraud.row(_rec(hour=-1), np.zeros(fraud.dim, dtype=np.float32))
    assert info.value.reason == "out_of_range"
    assert "hour" in info.value.detail


def test_declared_missing_value_is_used() -> None:
    spec = FeatureSpec(numeric=[NumericFeature(name="v", center=1.0, scale=2.0, missing=2.0)])
    X, _, status = Featurizer(spec, label="y").transform([{"v": None, "y": False}, {"y": True}])
    assert status == [True, True]
    assert X[:, 0].tolist() == [0.5, 0.5]


def test_missing_label_gives_nan(fraud: Featurizer) -> None:
    recs = [_rec(is_fraud=None), _rec(is_fraud=True), {k: v for k, v in _rec().items() if k != "is_fraud"}]
    X, y, status = fraud.transform(recs)
    assert status == [True, True, True]
    assert math.isnan(y[0]) and y[1] == 1.0 and math.isnan(y[2])
    np.testing.assert_array_equal(X[0], X[1])  # an unlabelled record still has its features


def test_empty_batch(fraud: Featurizer) -> None:
    X, y, status = fraud.transform([])
    assert X.shape == (0, fraud.dim) and y.shape == (0,) and status == []
