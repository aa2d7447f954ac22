"""Rows of a real data file as records, by the topology's column mapping (stdlib csv, gzip aware)."""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from streamfed.errors import ConfigError
from streamfed.topology.spec import SourceSpec


def open_text(path: Path, what: str = "source file") -> io.TextIOBase:
    """A data file as text (``.gz`` read as gzip); ``what`` names it in the error when it is missing."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _convert(value: str, avro_type: Any, na: set[str], field: str) -> Any:
    types = avro_type if isinstance(avro_type, list) else [avro_type]
    nullable = "null" in types
    base = next((t for t in types if t != "null"), "string")
    v = value.strip()
    if v in na:
        if nullable:
            return None
        raise ConfigError(f"field {field} is not nullable but the file has a missing value")
    if base in ("double", "float"):
        return float(v)
    if base in ("int", "long"):
        return int(float(v))
    if base == "boolean":
        low = v.lower()
        if low in ("true", "yes", "y", "t"):
            return True
        if low in ("false", "no", "n", "f"):
            return False
        try:
            return float(low) != 0.0  # "1", "1.0", "0.0"
        except ValueError:
            raise ConfigError(f"field {field}: {value!r} is not a boolean (true/false, yes/no or a number)") from None
    return v


def read_source_rows(
    spec: SourceSpec, site_id: str, schema_fields: dict[str, Any], label_field: str, id_field: str
) -> Iterator[dict[str, Any]]:
    """Yield one record per kept row, in file order; ``event_time`` is left for the producer."""
    na = set(spec.na_values)
    with open_text(spec.path) as fh:
        reader = csv.reader(fh, delimiter=spec.separator)
        header = next(reader) if spec.header else list(spec.columns or [])
        if spec.header and spec.columns:
            header = list(spec.columns)
        index = {name: i for i, name in enumerate(header)}
        for col in [spec.label_column, *spec.where, *spec.fields.values()]:
            if col not in index:
                raise ConfigError(f"source {spec.path}: no column {col!r}; columns: {', '.join(header)}")
        skip = {id_field, "site_id", "event_time", label_field}
        mapping = {f: spec.fields.get(f, f) for f in schema_fields if f not in skip}
        mapping = {f: c for f, c in mapping.items() if c in index and c not in spec.drop_columns}
        rows: Iterable[list[str]] = reader
        if spec.shuffle_seed is not None:
            rows = list(reader)
            random.Random(spec.shuffle_seed).shuffle(rows)
        label_at = index[spec.label_column]
        rows = (r for r in rows if r and len(r) >= len(header))
        for n, (row, label_cell) in enumerate(_lead_labels(rows, label_at, spec.label_lead)):
            if any(row[index[c]].strip() not in allowed for c, allowed in spec.where.items()):
                continue
            rec: dict[str, Any] = {id_field: f"{site_id}-{n}", "site_id": site_id, "event_time": 0}
            for f, c in mapping.items():
                rec[f] = _convert(row[index[c]], schema_fields[f], na, f)
            raw = "" if label_cell is None else label_cell.strip()
            if label_cell is None or raw in na:
                rec[label_field] = None
            elif spec.label_positive is not None:
                rec[label_field] = raw in spec.label_positive
            else:
                assert spec.label_threshold is not None
                rec[label_field] = float(raw) > spec.label_threshold
            yield rec


def _lead_labels(rows: Iterable[list[str]], label_at: int, lead: int) -> Iterator[tuple[list[str], str | None]]:
    """Each row with the label cell of the row ``lead`` rows later (None past the end)."""
    if lead == 0:
        for row in rows:
            yield row, row[label_at]
        return
    pending: deque[list[str]] = deque()
    for row in rows:
        pending.append(row)
        if len(pending) > lead:
            yield pending.popleft(), row[label_at]
    for row in pending:
        yield row, None
