"""Draft a topology and its record schema from a CSV file (``streamfed topology init --from-csv``).

The draft is a starting point a person reviews: each column becomes a numeric, categorical or
boolean feature by its values, the label column a nullable boolean, and each value of the site
column one site replaying its rows. Numeric centres and scales are the file's medians and spreads,
said so in the file: they are a fact about the data, outside the privacy guarantee, so a topology
shared beyond the file's owner should declare reference values instead.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamfed.errors import ConfigError
from streamfed.sources.replay import open_text

NA = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "?")
TRUE = {"1", "1.0", "true", "yes", "y", "t"}
FALSE = {"0", "0.0", "false", "no", "n", "f"}
MAX_CATEGORIES = 30  # a string column with more distinct values is left out (ids, free text)
MAX_SITES = 50
SAMPLE_ROWS = 200_000


@dataclass
class Draft:
    """What ``init`` writes, and what it decided about each column (for the person reading it)."""

    topology: dict[str, Any]
    schema: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _read(path: Path, separator: str | None) -> tuple[list[str], list[list[str]], str]:
    with open_text(path, "--from-csv:") as fh:
        head = fh.read(64 * 1024)
        if separator is None:
            try:
                separator = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
            except csv.Error:
                separator = ","
        fh.seek(0)
        reader = csv.reader(fh, delimiter=separator)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ConfigError(f"--from-csv: {path} is empty") from None
        rows = []
        for row in reader:
            if len(row) == len(header):
                rows.append([c.strip() for c in row])
            if len(rows) >= SAMPLE_ROWS:
                break
    if not rows:
        raise ConfigError(f"--from-csv: {path} has a header and no rows")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise ConfigError(f"--from-csv: {path} repeats columns {', '.join(dup)}")
    return header, rows, separator


def avro_name(column: str) -> str:
    """An Avro field name for a column (``emp.var.rate`` -> ``emp_var_rate``)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", column.strip())
    if not name or not (name[0].isalpha() or name[0] == "_"):
        name = f"f_{name}"
    return name


def site_id(value: str) -> str:
    """A site id (lower case, ``[a-z0-9_-]``) for a value of the site column."""
    sid = re.sub(r"[^a-z0-9_-]+", "-", value.strip().lower()).strip("-") or "unknown"
    return sid if sid[0].isalpha() else f"site-{sid}"[:63]


def _as_float(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _numeric(name: str, values: list[float], has_missing: bool) -> dict[str, Any]:
    """Median centre and a robust spread; log1p when a non-negative column is heavy-tailed."""
    feat: dict[str, Any] = {"name": name}
    xs = sorted(values)
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    median = statistics.median(xs)
    if xs[0] >= 0 and q[98] > 20 * max(median, 1.0):
        feat["transform"] = "log1p"
        xs = [math.log1p(x) for x in xs]
        q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    centre = statistics.median(xs)
    spread = (q[74] - q[24]) / 1.349 if len(xs) > 1 else 0.0
    if spread <= 0:
        spread = statistics.pstdev(xs) or 1.0
    feat["center"] = float(f"{centre:.6g}")
    feat["scale"] = float(f"{spread:.6g}")
    if has_missing:
        feat["missing"] = float(f"{median:.6g}")
    return feat


def _label_rule(column: str, values: list[str], positive: list[str] | None) -> dict[str, Any]:
    distinct = sorted(set(values) - set(NA))
    if positive:
        unknown = sorted(set(positive) - set(distinct))
        if unknown:
            raise ConfigError(
                f"--positive {', '.join(unknown)}: not a value of column {column}; its values: "
                + ", ".join(distinct[:20])
            )
        return {"label_positive": list(positive)}
    low = {v.lower() for v in distinct}
    if low and low <= TRUE | FALSE and low & TRUE and low & FALSE:
        return {"label_positive": [v for v in distinct if v.lower() in TRUE]}
    nums = [_as_float(v) for v in distinct]
    if nums and all(n is not None for n in nums):
        return {"label_threshold": min(n for n in nums if n is not None)}
    raise ConfigError(
        f"--label {column}: cannot tell which values are positive; give --positive VALUE (its values: "
        + ", ".join(distinct[:20])
        + ")"
    )


def draft_from_csv(
    csv_path: Path,
    out_dir: Path,
    *,
    label: str,
    name: str | None = None,
    site_column: str | None = None,
    positive: list[str] | None = None,
    separator: str | None = None,
    rate: float = 200.0,
    drop: list[str] | None = None,
) -> Draft:
    """Draft a topology (sites replaying ``csv_path``) and its Avro record schema."""
    header, rows, sep = _read(csv_path, separator)
    for opt, col in (("--label", label), ("--site-column", site_column), *(("--drop", d) for d in drop or [])):
        if col is not None and col not in header:
            raise ConfigError(f"{opt} {col}: no such column in {csv_path}; columns: {', '.join(header)}")
    if site_column == label:
        raise ConfigError("--site-column and --label name the same column")
    name = name or site_id(csv_path.name.split(".")[0]).replace("_", "-")
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", name):
        raise ConfigError(f"--name {name!r}: a topology name is lower case, [a-z][a-z0-9_-]*")
    notes: list[str] = []
    idx = {c: i for i, c in enumerate(header)}
    reserved = {"record_id", "site_id", "event_time"}
    fields_avro: list[dict[str, Any]] = [
        {"name": "record_id", "type": "string"},
        {"name": "site_id", "type": "string"},
        {"name": "event_time", "type": "long"},
    ]
    numeric: list[dict[str, Any]] = []
    categorical: list[dict[str, Any]] = []
    boolean: list[str] = []
    mapping: dict[str, str] = {}
    for col in header:
        if col in (label, site_column):
            continue
        if col in (drop or []):
            notes.append(f"left out column {col!r}: --drop")
            continue
        fname = avro_name(col)
        if fname in reserved or any(f["name"] == fname for f in fields_avro):
            notes.append(f"left out column {col!r}: its field name {fname} is taken")
            continue
        cells = [r[idx[col]] for r in rows]
        present = [c for c in cells if c not in NA]
        if not present:
            notes.append(f"left out column {col!r}: every value is missing")
            continue
        has_missing = len(present) < len(cells)
        nums = [_as_float(c) for c in present]
        low = {c.lower() for c in present}
        if low <= TRUE | FALSE and not all(n is not None for n in nums):
            boolean.append(fname)
            avro_type: Any = ["null", "boolean"]
        elif all(n is not None for n in nums):
            if len(set(present)) == len(cells) > 100 and all(float(n).is_integer() for n in nums if n is not None):
                notes.append(f"left out column {col!r}: a distinct integer in every row (an id?)")
                continue
            numeric.append(_numeric(fname, [n for n in nums if n is not None], has_missing))
            avro_type = ["null", "double"]
        else:
            counts = Counter(present)
            if len(counts) > MAX_CATEGORIES:
                notes.append(f"left out column {col!r}: {len(counts)} distinct strings (an id or free text?)")
                continue
            categorical.append({"name": fname, "values": [v for v, _ in counts.most_common()]})
            avro_type = ["null", "string"]
        fields_avro.append({"name": fname, "type": avro_type, "default": None})
        if fname != col:
            mapping[fname] = col
    label_field = avro_name(label)
    if label_field in reserved or any(f["name"] == label_field for f in fields_avro):
        label_field = f"{label_field}_label"
    fields_avro.append(
        {"name": label_field, "type": ["null", "boolean"], "default": None, "doc": f"from column {label}"}
    )
    rule = _label_rule(label, [r[idx[label]] for r in rows], positive)
    if not (numeric or categorical or boolean):
        raise ConfigError(f"--from-csv: {csv_path} has no column usable as a feature besides the label")

    out_dir = out_dir.resolve()
    source: dict[str, Any] = {"path": os.path.relpath(csv_path.resolve(), out_dir)}
    if sep != ",":
        source["separator"] = sep
    if mapping:
        source["fields"] = mapping
    source["label_column"] = label
    source.update(rule)
    source["rate"] = rate
    if site_column is None:
        smallest = len(rows)
        sites = [{"id": "site-1", "source": source}]
        notes.append("one site replays the whole file: give --site-column to split it into sites")
    else:
        values = Counter(r[idx[site_column]] for r in rows if r[idx[site_column]] not in NA)
        if len(values) > MAX_SITES:
            raise ConfigError(f"--site-column {site_column}: {len(values)} distinct values; at most {MAX_SITES} sites")
        smallest = min(values.values())
        sites, seen = [], set()
        for value in sorted(values, key=str.lower):
            sid = site_id(value)
            while sid in seen:
                sid = f"{sid}-x"
            seen.add(sid)
            sites.append({"id": sid, "source": {**source, "where": {site_column: [value]}}})
    window = 20 if smallest < 1000 else 50
    schema_name = re.sub(r"(^|[-_])([a-z0-9])", lambda m: m.group(2).upper(), name) + "Record"
    schema = {
        "type": "record",
        "name": schema_name,
        "namespace": "streamfed.records",
        "doc": f"Drafted by `streamfed topology init` from the columns of {csv_path.name}.",
        "fields": fields_avro,
    }
    features: dict[str, Any] = {}
    if numeric:
        features["numeric"] = numeric
    if categorical:
        features["categorical"] = categorical
    if boolean:
        features["boolean"] = boolean
    topology = {
        "name": name,
        "description": f"Drafted from {csv_path.name}: {len(sites)} site(s), label {label}.",
        "model": {
            "name": f"{name}-model",
            "record_schema": f"{name}.avsc",
            "label": label_field,
            "features": features,
            "id_field": "record_id",
        },
        "privacy": {"epsilon": 8.0, "delta": 1e-6, "clip_norm": 1.0, "mechanism": "window_sum"},
        # short windows learn best on real data of this size (benchmarks/README.md, quality)
        "update": {"every_records": window, "every_seconds": 5.0, "min_records": max(5, window * 2 // 5)},
        "aggregation": {"strategy": "fedbuff", "rule": "mean", "buffer_size": 1, "max_staleness": 20},
        # one partition keeps a file's order; fast group joins on the embedded broker (`streamfed up`)
        "kafka": {
            "bootstrap_servers": "127.0.0.1:9092",
            "partitions": 1,
            "consumer_settings": {"session.timeout.ms": 2000, "heartbeat.interval.ms": 300},
        },
        "sites": sites,
    }
    return Draft(topology, schema, notes)


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated values out in full (no ``&id001`` anchors in a file people edit)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


HEADER = """\
# Drafted by `streamfed topology init --from-csv {csv}`: review it before use.
# - numeric centres and scales are this file's medians and spreads: a fact about the data that the
#   privacy guarantee does not cover; declare reference values (ranges a domain expert would give)
#   before sharing this topology with other sites or the aggregator;
# - categorical values are those seen in the file (an unseen value encodes as zeros);
# - privacy.epsilon is a placeholder: choose it (`streamfed topology validate` prints what it means).
"""


def write_draft(draft: Draft, csv_path: Path, out_dir: Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.yaml`` and ``<name>.avsc`` into ``out_dir``; refuse to overwrite unless ``force``."""
    import json

    name = draft.topology["name"]
    topo_file, schema_file = out_dir / f"{name}.yaml", out_dir / f"{name}.avsc"
    for f in (topo_file, schema_file):
        if f.exists() and not force:
            raise ConfigError(f"{f} exists; pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    schema_file.write_text(json.dumps(draft.schema, indent=2) + "\n")
    body = yaml.dump(draft.topology, Dumper=_PlainDumper, sort_keys=False, width=110)
    topo_file.write_text(HEADER.format(csv=csv_path.name) + body)
    return topo_file, schema_file
