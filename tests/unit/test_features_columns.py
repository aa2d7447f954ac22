"""The featurizer's column-at-a-time path gives exactly the row path's output, and steps aside for bad batches."""

from __future__ import annotations

import numpy as np
import pytest

from streamfed.learners.features import Featurizer
from streamfed.sources import TransactionSimulator
from streamfed.topology import FeatureSpec, NumericFeature, SimulatorSpec, load_topology


@pytest.fixture(scope="module")
def fraud() -> Featurizer:
    topo = load_topology("fraud")
    return Featurizer(topo.model.features, topo.model.label)


def _rows_only(f: Featurizer, records: list[dict]) -> tuple[np.ndarray, np.ndarray, list[bool | str]]:
    slow = Featurizer(f.spec, f.label)
    slow._transform_columns = lambda _records: None  # type: ignore[method-assign]
    return slow.transform(records)


def _records(n: int, seed: int = 5) -> list[dict]:
    sim = TransactionSimulator("s", SimulatorSpec(rate=100, fraud_rate=0.05, label_fraction=0.6, seed=seed))
    return sim.batch(n, t=0.0)


def test_column_path_is_bit_identical_to_the_row_path(fraud: Featurizer) -> None:
    records = _records(3000)
    fast = fraud._transform_columns(records)
    assert fast is not None
    X, y, status = fast
    Xr, yr, sr = _rows_only(fraud, records)
    assert np.array_equal(X, Xr)
    assert np.array_equal(y, yr, equal_nan=True)
    assert status == sr == [True] * len(records)
    assert np.isnan(y).any() and (y == 1.0).any()


@pytest.mark.parametrize(
    "change",
    [
        {"amount": None},
        {"amount": -1.0},
        {"amount": float("nan")},
        {"hour": True},
        {"hour": "6"},
        {"merchant_category": 3},
        {"card_present": 1},
        {"is_fraud": 1},
    ],
)
def test_a_bad_record_sends_the_batch_to_the_row_path_with_the_same_reasons(fraud: Featurizer, change: dict) -> None:
    records = _records(50)
    records[17] = {**records[17], **change}
    assert fraud._transform_columns(records) is None
    X, y, status = fraud.transform(records)
    Xr, yr, sr = _rows_only(fraud, records)
    assert status == sr and status[17] is not True and status.count(True) == 49
    assert np.array_equal(X, Xr) and np.array_equal(y, yr, equal_nan=True)


def test_missing_values_and_unknown_categories_match_the_row_path() -> None:
    spec = FeatureSpec(
        numeric=[
            NumericFeature(name="a", missing=2.0, min=0, max=10),
            NumericFeature(name="h", transform="cyclic", period=24),
        ],
        categorical=[{"name": "c", "values": ["x", "y"]}],
        boolean=["b"],
    )
    f = Featurizer(spec, label="l")
    records = [
        {"a": None, "h": 3, "c": "z", "b": True, "l": None},
        {"a": 4, "h": 23.5, "c": "y", "b": False, "l": False},
    ]
    fast = f._transform_columns(records)
    assert fast is not None
    Xr, yr, sr = _rows_only(f, records)
    assert np.array_equal(fast[0], Xr) and np.array_equal(fast[1], yr, equal_nan=True) and fast[2] == sr
    assert f._transform_columns([]) is None and f.transform([])[0].shape == (0, f.dim)
