"""Decode a batch of Avro bodies of one flat record schema column by column, with numpy.

A site reads thousands of records a second of one schema. Decoding them one at a time with
``fastavro.schemaless_reader`` and re-encoding each to refuse non-canonical bytes
(:meth:`~streamfed.serde.avro.AvroCodec.decode`) costs about 13 us a record here; this module reads
a whole batch field by field instead: the varints, doubles and booleans of every record at once
(numpy gathers over the concatenated bodies), and only strings one Python slice each.

It is strict by construction, in the way the per-record check is: a varint must be minimal and fit
its type, a boolean must be 0 or 1, a union or enum index must be in range, a length must not be
negative, no record may read past its end or leave bytes after it. It never decides a refusal: a
record it cannot read is handed back, and the caller decodes it with the per-record path, whose
error is the one reported (so reasons and messages are those of ``AvroCodec.decode``, and a record
only this module would refuse is still read as that path reads it).

Supported schemas: a record whose fields are ``null``, ``boolean``, ``int``, ``long``, ``float``,
``double``, ``string``, ``bytes``, an enum, a fixed, or a union of those, without logical types
(:func:`plan` returns None otherwise and the caller keeps the per-record path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_PAD = 16  # zero bytes after the last body, so a gather of up to 10 bytes never leaves the buffer
_AR = np.arange(_PAD, dtype=np.int64)
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}

Column = list[Any] | np.ndarray  # one field of every record read: an array for booleans and numbers


@dataclass(frozen=True)
class Kind:
    """How one value is laid out: an Avro primitive, ``enum`` (symbols), ``fixed`` (size), or ``union``."""

    type: str
    symbols: tuple[str, ...] = ()
    size: int = 0
    branches: tuple[Kind, ...] = ()


def _kind(schema: Any, in_union: bool = False) -> Kind | None:
    if isinstance(schema, str):
        return Kind(schema) if schema in _PRIMITIVES else None
    if isinstance(schema, list):
        if in_union:
            return None
        branches = tuple(_kind(s, in_union=True) for s in schema)
        if not branches or any(b is None for b in branches):
            return None
        return Kind("union", branches=branches)  # type: ignore[arg-type]
    if isinstance(schema, dict) and "logicalType" not in schema:
        t = schema.get("type")
        if t == "enum":
            return Kind("enum", symbols=tuple(schema["symbols"]))
        if t == "fixed":
            return Kind("fixed", size=int(schema["size"]))
        if isinstance(t, str) and t in _PRIMITIVES and len(schema) == 1:
            return Kind(t)
    return None


def plan(schema: Any) -> tuple[tuple[str, Kind], ...] | None:
    """The fields of a parsed flat record schema, in order with their kinds, or None if unsupported."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields = []
    for f in schema.get("fields", ()):
        kind = _kind(f["type"])
        if kind is None:
            return None
        fields.append((f["name"], kind))
    return tuple(fields)


class BatchDecoder:
    """Decodes many Confluent-wire-format messages of one schema id at once (see the module docstring)."""

    def __init__(self, fields: tuple[tuple[str, Kind], ...], header: bytes) -> None:
        self.fields = fields
        self.names = tuple(name for name, _ in fields)
        self.header = np.frombuffer(header, dtype=np.uint8)

    def decode(self, values: Sequence[bytes | None]) -> tuple[list[dict[str, Any] | None], np.ndarray]:
        """``(records, unread)``: the record of each value, None where ``unread`` is True.

        ``unread`` marks the values this decoder could not read (not this schema id, too short,
        or anything not strictly valid): decode those one at a time.
        """
        n = len(values)
        unread = np.ones(n, dtype=bool)
        out: list[dict[str, Any] | None] = [None] * n
        got = self.read(values)
        if got is None:
            return out, unread
        index, columns = got
        rows = to_rows(self.names, columns)
        if len(index) == n:  # every value read (the usual batch)
            return rows, np.zeros(n, dtype=bool)  # type: ignore[return-value]
        for i, row in zip(index.tolist(), rows, strict=True):
            out[i] = row
        unread[index] = False
        return out, unread

    def columns(self, values: Sequence[bytes | None]) -> dict[str, Column] | None:
        """Every value's fields as one column per field name, or None unless every value was read.

        A column is a numpy array for ``boolean``, ``int``, ``long``, ``float`` and ``double`` fields
        (bool, int64, float64), a list otherwise (None for a null branch of a union).
        """
        got = self.read(values)
        if got is None or len(got[0]) != len(values):
            return None
        return dict(zip(self.names, got[1], strict=True))

    def read(self, values: Sequence[bytes | None]) -> tuple[np.ndarray, list[Column]] | None:
        """``(index, columns)``: the positions in ``values`` of the records read, in order, and their
        fields, one column per field; None when none could be read."""
        n = len(values)
        try:  # the usual batch: every value bytes with a body
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)  # type: ignore[arg-type]
            whole = set(map(type, values)) == {bytes} and bool((lengths > len(self.header)).all())
        except TypeError:  # a None among them
            whole = False
        if whole:
            cand: Sequence[int] = range(n)
            bodies = values
        else:
            cand = [i for i, v in enumerate(values) if type(v) is bytes and len(v) > len(self.header)]
            if not cand:
                return None
            bodies = [values[i] for i in cand]
            lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))  # type: ignore[arg-type]
        data = b"".join(bodies)  # type: ignore[arg-type]
        ends = np.cumsum(lengths)
        starts = ends - lengths
        buf = np.frombuffer(data + bytes(_PAD), dtype=np.uint8)
        ok = (buf[starts[:, None] + _AR[: len(self.header)]] == self.header).all(axis=1)
        reader = _Reader(buf, data, ends, len(data))
        idx = np.flatnonzero(ok)
        pos = starts[idx] + len(self.header)
        columns: list[Column] = []
        for _, kind in self.fields:
            col, pos, bad = reader.read(kind, idx, pos)
            if bad.any():  # keep reading only the records still good
                keep = ~bad
                idx, pos = idx[keep], pos[keep]
                columns = [_take(c, keep) for c in columns]
                col = _take(col, keep)
            columns.append(col)
            if not len(idx):
                return None
        done = pos == ends[idx]
        if not done.all():
            idx = idx[done]
            columns = [_take(c, done) for c in columns]
            if not len(idx):
                return None
        index = idx if whole else np.asarray(cand, dtype=np.int64)[idx]
        return index, columns


def to_rows(names: Sequence[str], columns: Sequence[Column]) -> list[dict[str, Any]]:
    """One dict a record from columns in the order of ``names`` (arrays give Python values)."""
    lists = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]


def _take(col: Column, keep: np.ndarray) -> Column:
    if isinstance(col, np.ndarray):
        return col[keep]
    return [v for v, k in zip(col, keep.tolist(), strict=True) if k]


class _Reader:
    """Reads one kind of value at given positions of many records of one concatenated buffer."""

    def __init__(self, buf: np.ndarray, data: bytes, ends: np.ndarray, total: int) -> None:
        self.buf, self.data, self.ends, self.total = buf, data, ends, total

    def read(self, kind: Kind, idx: np.ndarray, pos: np.ndarray) -> tuple[Column, np.ndarray, np.ndarray]:
        """(values, positions after, bad) for records ``idx`` at positions ``pos``; the values of a
        boolean or a number as an array."""
        t = kind.type
        m = len(idx)
        if t == "null":
            return [None] * m, pos, np.zeros(m, dtype=bool)
        if t == "boolean":
            b = self.buf[np.minimum(pos, self.total)]
            return b == 1, pos + 1, (b > 1) | (pos + 1 > self.ends[idx])
        if t in ("int", "long", "enum"):
            v, pos, bad = self._varint(pos, 5 if t == "int" else 10)
            if t == "enum":
                bad |= (v < 0) | (v >= len(kind.symbols))
                symbols = kind.symbols
                vals = [symbols[k] if 0 <= k < len(symbols) else None for k in v.tolist()]
                return vals, pos, bad | (pos > self.ends[idx])
            return v, pos, bad | (pos > self.ends[idx])
        if t in ("double", "float"):
            size = 8 if t == "double" else 4
            raw = self.buf[np.minimum(pos, self.total)[:, None] + _AR[:size]]
            vals = np.ascontiguousarray(raw).view("<f8" if size == 8 else "<f4").ravel()
            return vals.astype(np.float64), pos + size, pos + size > self.ends[idx]
        if t in ("string", "bytes", "fixed"):
            if t == "fixed":
                length = np.full(m, kind.size, dtype=np.int64)
                bad = np.zeros(m, dtype=bool)
            else:
                length, pos, bad = self._varint(pos, 10)
                bad |= length < 0
            end = pos + np.maximum(length, 0)
            bad |= end > self.ends[idx]
            data = self.data
            pieces = [data[s:e] for s, e in zip(pos.tolist(), end.tolist(), strict=True)]
            if t == "string":
                try:
                    pieces = [p.decode() for p in pieces]
                except UnicodeDecodeError:
                    pieces, bad = _decode_each(pieces, bad)
            return pieces, end, bad
        if t == "union":
            branch, pos, bad = self._varint(pos, 10)
            bad |= (branch < 0) | (branch >= len(kind.branches))
            vals = np.empty(m, dtype=object)
            for b, sub in enumerate(kind.branches):
                sel = np.flatnonzero(branch == b)
                if not len(sel):
                    continue
                if sub.type == "null":
                    continue  # None already, no bytes
                got, after, wrong = self.read(sub, idx[sel], pos[sel])
                tmp = np.empty(len(sel), dtype=object)
                tmp[:] = got.tolist() if isinstance(got, np.ndarray) else got
                vals[sel] = tmp
                pos = pos.copy()
                pos[sel] = after
                bad[sel] |= wrong
            return vals.tolist(), pos, bad | (pos > self.ends[idx])
        raise AssertionError(f"unplanned kind {t}")

    def _varint(self, pos: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Zigzag varints of at most ``width`` bytes: (values, positions after, not minimal or too long)."""
        first = self.buf[np.minimum(pos, self.total)]
        if (first < 0x80).all():  # one byte each (small ints, string lengths, union indexes)
            u1 = first.astype(np.int64)
            return (u1 >> 1) ^ -(u1 & 1), pos + 1, np.zeros(len(pos), dtype=bool)
        raw = self.buf[np.minimum(pos, self.total)[:, None] + _AR[:width]]
        last = raw < 0x80
        found = last.any(axis=1)
        n = last.argmax(axis=1) + 1
        rows = np.arange(len(pos))
        top = raw[rows, n - 1]
        bad = ~found | ((n > 1) & (top == 0))  # a zero last byte of several is a non-minimal encoding
        if width == 10:
            bad |= (n == 10) & (top > 1)  # more than 64 bits
        else:
            bad |= (n == 5) & (top > 0x0F)  # more than 32 bits
        digits = (raw & 0x7F).astype(np.uint64) * (_AR[:width] < n[:, None])
        u = (digits << _SHIFTS[:width]).sum(axis=1, dtype=np.uint64)
        v = (u >> np.uint64(1)).astype(np.int64) ^ -(u & np.uint64(1)).astype(np.int64)
        return v, pos + n, bad


def _decode_each(pieces: list[bytes], bad: np.ndarray) -> tuple[list[Any], np.ndarray]:
    bad = bad.copy()
    out: list[Any] = []
    for k, p in enumerate(pieces):
        try:
            out.append(p.decode())
        except UnicodeDecodeError:
            out.append(None)
            bad[k] = True
    return out, bad
