"""Records -> feature matrix by the topology's declared features. A bad record raises RecordError."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from streamfed.errors import SerializationError
from streamfed.serde.columnar import Column
from streamfed.topology.spec import FeatureSpec

Transformed = tuple[np.ndarray, np.ndarray, list[bool | str]]


class RecordError(SerializationError):
    """A decoded record fails validation; ``reason`` is a short code for the dead-letter topic."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Featurizer:
    """Turns decoded records into a float32 matrix in the shared feature order.

    >>> from streamfed.topology.spec import FeatureSpec, NumericFeature
    >>> f = Featurizer(FeatureSpec(numeric=[NumericFeature(name="amount", transform="log1p")]), label="y")
    >>> X, y, ok = f.transform([{"amount": 0.0, "y": True}])
    >>> X.tolist(), y.tolist(), ok
    ([[0.0]], [1.0], [True])
    """

    def __init__(self, spec: FeatureSpec, label: str) -> None:
        self.spec = spec
        self.label = label
        self.names = spec.names()
        self.dim = len(self.names)
        self._cat_index = [{v: i for i, v in enumerate(c.values)} for c in spec.categorical]
        # every field the column path reads, in its order, fetched from each record in one call
        self._fields = [f.name for f in spec.numeric] + [c.name for c in spec.categorical] + list(spec.boolean)
        self._fields.append(label)
        self._getter = itemgetter(*self._fields)

    def row(self, rec: dict[str, Any], out: np.ndarray) -> None:
        j = 0
        for f in self.spec.numeric:
            v = rec.get(f.name)
            if v is None:
                if f.missing is None:
                    raise RecordError("missing_value", f"{f.name} is null and the topology declares no 'missing' value")
                v = f.missing
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise RecordError("wrong_type", f"{f.name} is {type(v).__name__}, expected a number")
            v = float(v)
            if not math.isfinite(v):
                raise RecordError("not_finite", f"{f.name} = {v}")
            if (f.min is not None and v < f.min) or (f.max is not None and v > f.max):
                raise RecordError("out_of_range", f"{f.name} = {v:g} outside [{f.min}, {f.max}]")
            if f.transform == "log1p":
                if v <= -1:
                    raise RecordError("out_of_range", f"{f.name} = {v:g} has no log1p")
                out[j] = (math.log1p(v) - f.center) / f.scale
                j += 1
            elif f.transform == "cyclic":
                angle = 2 * math.pi * v / (f.period or 1.0)
                out[j] = math.sin(angle)
                out[j + 1] = math.cos(angle)
                j += 2
            else:
                out[j] = (v - f.center) / f.scale
                j += 1
        for c, index in zip(self.spec.categorical, self._cat_index, strict=True):
            v = rec.get(c.name)
            if not isinstance(v, str):
                raise RecordError("wrong_type", f"{c.name} is {type(v).__name__}, expected a string")
            k = index.get(v)
            if k is not None:
                out[j + k] = 1.0
            j += len(c.values)
        for b in self.spec.boolean:
            v = rec.get(b)
            if not isinstance(v, bool):
                raise RecordError("wrong_type", f"{b} is {type(v).__name__}, expected a boolean")
            out[j] = 1.0 if v else 0.0
            j += 1

    def transform(self, records: Sequence[dict[str, Any]]) -> Transformed:
        """Returns (X, y, status) for the records; y is NaN where the label is unknown.

        ``status[i]`` is True for a usable record, else the RecordError text; rows of bad records
        are left at zero and must be dropped by the caller.
        """
        fast = self._transform_columns(records)
        if fast is not None:
            return fast
        n = len(records)
        X = np.zeros((n, self.dim), dtype=np.float32)
        y = np.full(n, np.nan, dtype=np.float32)
        status: list[bool | str] = []
        for i, rec in enumerate(records):
            try:
                self.row(rec, X[i])
                lab = rec.get(self.label)
                if lab is not None:
                    if not isinstance(lab, bool):
                        raise RecordError("wrong_type", f"label {self.label} is {type(lab).__name__}, expected boolean")
                    y[i] = 1.0 if lab else 0.0
                status.append(True)
            except RecordError as exc:
                X[i] = 0.0
                status.append(str(exc))
        return X, y, status

    def _transform_columns(self, records: Sequence[dict[str, Any]]) -> Transformed | None:
        """The whole batch column by column, or None when any record needs the row-by-row path.

        Only batches in which every record passes every check take this path (so a bad record gets
        exactly the row path's reason); the values are those of :meth:`row`, computed with numpy.
        """
        n = len(records)
        if n == 0:
            return None
        try:  # every field of every record in one call each; a missing one reads as None
            fetched = list(map(self._getter, records))
        except KeyError:
            fetched = [tuple(r.get(k) for k in self._fields) for r in records]
        except TypeError:
            return None
        columns = list(zip(*fetched, strict=True)) if len(self._fields) > 1 else [fetched]
        return self._from_columns(columns, n)

    def transform_columns(self, columns: Mapping[str, Column], n: int) -> Transformed | None:
        """:meth:`transform` of ``n`` records given as columns (field name -> one value per record, a
        list or a numpy array: :meth:`~streamfed.serde.avro.AvroCodec.decode_columns`), when every
        record passes every check; else None, and the caller uses :meth:`transform` on the records
        (which gives each bad one its reason). A field the columns lack reads as None."""
        if n == 0:
            return None
        nones = [None] * n
        return self._from_columns([columns.get(k, nones) for k in self._fields], n)

    def _from_columns(self, columns: Sequence[Column], n: int) -> Transformed | None:
        numeric, k = columns[: len(self.spec.numeric)], len(self.spec.numeric)
        categorical = columns[k : k + len(self.spec.categorical)]
        k += len(self.spec.categorical)
        boolean, labels = columns[k:-1], columns[-1]
        X = np.zeros((n, self.dim), dtype=np.float32)
        j = 0
        for f, col in zip(self.spec.numeric, numeric, strict=True):
            if isinstance(col, np.ndarray):
                if col.dtype.kind not in "iuf":  # booleans are no numbers here, as in row()
                    return None
                v = col.astype(np.float64, copy=False)
            else:
                kinds = set(map(type, col))
                if kinds - _NUMBER:
                    if f.missing is None or kinds - _NUMBER != {type(None)}:
                        return None
                    col = tuple(f.missing if v is None else v for v in col)
                v = np.asarray(col, dtype=np.float64)
            if not np.isfinite(v).all():
                return None
            if (f.min is not None and (v < f.min).any()) or (f.max is not None and (v > f.max).any()):
                return None
            if f.transform == "log1p":
                if (v <= -1).any():
                    return None
                X[:, j] = (np.log1p(v) - f.center) / f.scale
                j += 1
            elif f.transform == "cyclic":
                angle = 2 * math.pi * v / (f.period or 1.0)
                X[:, j] = np.sin(angle)
                X[:, j + 1] = np.cos(angle)
                j += 2
            else:
                X[:, j] = (v - f.center) / f.scale
                j += 1
        rows = np.arange(n)
        for c, index, cats in zip(self.spec.categorical, self._cat_index, categorical, strict=True):
            if isinstance(cats, np.ndarray) or set(map(type, cats)) != {str}:
                return None
            kk = np.fromiter(map(index.get, cats, [-1] * n), dtype=np.int64, count=n)
            known = kk >= 0
            X[rows[known], j + kk[known]] = 1.0
            j += len(c.values)
        for col in boolean:
            if isinstance(col, np.ndarray):
                if col.dtype.kind != "b":
                    return None
                X[:, j] = col
            else:
                if set(map(type, col)) != {bool}:
                    return None
                X[:, j] = np.fromiter(col, dtype=np.float32, count=n)
            j += 1
        if isinstance(labels, np.ndarray):
            if labels.dtype.kind != "b":
                return None
            y = labels.astype(np.float32)
        else:
            if set(map(type, labels)) - {bool, type(None)}:
                return None
            y = np.array(labels, dtype=np.float32) if None not in labels else _labels(labels)
        return X, y, [True] * n


_NUMBER = {int, float}


def _labels(labels: Sequence[bool | None]) -> np.ndarray:
    return np.fromiter((np.nan if v is None else float(v) for v in labels), dtype=np.float32, count=len(labels))
