"""fastavro codecs in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

Without a Schema Registry the id of a schema is derived from its CRC-64-AVRO fingerprint (the low
31 bits), so every StreamFed process agrees on it without coordination. Records written by a
Schema-Registry-aware producer decode once their id is registered with :meth:`SchemaRegistry.add`.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from streamfed.errors import SchemaError, SerializationError
from streamfed.serde.columnar import BatchDecoder, Column, plan
from streamfed.topology.loader import SCHEMA_DIR, is_schema_path, schema_file

MAGIC = 0
HEADER = struct.Struct(">bI")


class SchemaRegistry:
    """Schema id <-> parsed schema, for the schemas in one folder (and any added by hand)."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.schema_dir = schema_dir
        self._by_name: dict[str, tuple[int, Any, str]] = {}
        self._by_id: dict[int, Any] = {}

    def load(self, name: str) -> tuple[int, Any]:
        """Return ``(schema_id, parsed_schema)`` of ``schemas/avro/<name>.avsc``, or of the .avsc file
        ``name`` when it is a path (a user's own record schema; its history/ sits next to it)."""
        if name not in self._by_name:
            path = schema_file(name, self.schema_dir)
            try:
                parsed = fastavro.parse_schema(json.loads(path.read_text()))
            except FileNotFoundError as exc:
                if is_schema_path(name):
                    raise SchemaError(f"no Avro schema file {path}") from exc
                known = sorted(p.stem for p in self.schema_dir.glob("*.avsc"))
                raise SchemaError(f'no Avro schema "{name}" in {self.schema_dir}; valid: {", ".join(known)}') from exc
            except (ValueError, fastavro.schema.SchemaParseException) as exc:
                raise SchemaError(f"{path}: not a valid Avro schema: {exc}") from exc
            schema_id, fp = _local_id(parsed)
            self._by_name[name] = (schema_id, parsed, fp)
            self._by_id[schema_id] = parsed
            # Earlier versions of the schema (history/<name>.<n>.avsc): records they wrote still
            # decode, resolved to the current one (fields added since take their defaults).
            for old in sorted((path.parent / "history").glob(f"{path.stem}.*.avsc")):
                earlier = fastavro.parse_schema(json.loads(old.read_text()))
                self._by_id.setdefault(_local_id(earlier)[0], earlier)
        schema_id, parsed, _ = self._by_name[name]
        return schema_id, parsed

    def fingerprint(self, name: str) -> str:
        self.load(name)
        return self._by_name[name][2]

    def add(self, schema_id: int, schema: dict[str, Any]) -> None:
        """Register a writer schema under an id assigned elsewhere (e.g. by a Schema Registry)."""
        self._by_id[schema_id] = fastavro.parse_schema(schema)

    def by_id(self, schema_id: int) -> Any | None:
        return self._by_id.get(schema_id)


def _local_id(parsed: Any) -> tuple[int, str]:
    """(schema id, CRC-64-AVRO fingerprint): the id is the fingerprint's low 31 bits."""
    fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return int(fp[-8:], 16) & 0x7FFFFFFF, fp


@cache
def default_registry() -> SchemaRegistry:
    return SchemaRegistry()


class AvroCodec:
    """Encode/decode one record type; decoding resolves any registered writer schema to this one.

    >>> codec = AvroCodec("dead_letter")
    >>> rec = {"component": "site", "site_id": None, "source_topic": "t", "partition": 0, "offset": 1,
    ...        "key": None, "value": b"x", "reason": "decode", "detail": "", "created_ms": 0}
    >>> codec.decode(codec.encode(rec))["reason"]
    'decode'
    """

    def __init__(self, name: str, registry: SchemaRegistry | None = None) -> None:
        self.name = name
        self.registry = registry or default_registry()
        self.schema_id, self.schema = self.registry.load(name)
        self._header = HEADER.pack(MAGIC, self.schema_id)
        self._batch: BatchDecoder | bool | None = None  # built on first decode_many

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            # The writer alone coerces wrong types (None -> False, "12.0" -> 12.0) and writes ints no
            # 32-bit reader can read; validate first so a record decodes as what was encoded.
            validate(record, self.schema, raise_errors=True, strict=False)
            fastavro.schemaless_writer(buf, self.schema, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, ValidationError) as exc:
            raise SerializationError(f"record does not match schema {self.name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None or len(data) < HEADER.size:
            raise SerializationError(
                f"message of {0 if data is None else len(data)} bytes is too short for the wire format"
            )
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise SerializationError(f"unknown magic byte {magic} (expected {MAGIC}, Confluent wire format)")
        if schema_id == self.schema_id:
            writer = self.schema
        else:
            writer = self.registry.by_id(schema_id)
            if writer is None:
                raise SerializationError(
                    f"unknown schema id {schema_id} (this reader expects {self.name}, id {self.schema_id})"
                )
        buf = io.BytesIO(data)
        buf.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, writer, self.schema if writer is not self.schema else None)
        except Exception as exc:  # fastavro raises many kinds (EOFError, UnicodeDecodeError, SchemaResolutionError...)
            raise SerializationError(f"body does not decode as {self.name}: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise SerializationError(f"{len(data) - buf.tell()} trailing bytes after a {self.name} record")
        if not isinstance(record, dict):
            raise SerializationError(f"decoded a {type(record).__name__}, not a {self.name} record")
        if writer is self.schema:
            self._check_canonical(data, record)
        return record

    def decode_many(self, values: Sequence[bytes | None]) -> list[dict[str, Any] | SerializationError]:
        """:meth:`decode` of each value: its record, or the error :meth:`decode` raises for it.

        Records of this codec's own schema are read column by column
        (:class:`~streamfed.serde.columnar.BatchDecoder`, same records, several times faster); any
        value it does not read (another writer schema, or bytes that are not strictly valid) goes
        through :meth:`decode`, so every error is the one :meth:`decode` gives.
        """
        batch = self._batch_decoder() if len(values) > 1 else None
        if batch is None:
            records: list[dict[str, Any] | None] = [None] * len(values)
            unread = [True] * len(values)
        else:
            records, unread_mask = batch.decode(values)
            unread = unread_mask.tolist()
        out: list[dict[str, Any] | SerializationError] = []
        for value, rec, again in zip(values, records, unread, strict=True):
            if again:
                try:
                    rec = self.decode(value)
                except SerializationError as exc:
                    out.append(exc)
                    continue
            out.append(rec)  # type: ignore[arg-type]
        return out

    def decode_columns(self, values: Sequence[bytes | None]) -> dict[str, Column] | None:
        """Every value as columns (field name -> one value per record, see
        :meth:`~streamfed.serde.columnar.BatchDecoder.columns`), when every one of them is a strictly
        valid body of this codec's own schema; else None (use :meth:`decode_many`)."""
        batch = self._batch_decoder() if len(values) > 1 else None
        return None if batch is None else batch.columns(values)

    def _batch_decoder(self) -> BatchDecoder | None:
        """The column decoder of this codec's schema, or None when it is not a flat record."""
        if self._batch is None:
            fields = plan(self.schema)
            self._batch = BatchDecoder(fields, self._header) if fields else False
        return self._batch or None

    def _check_canonical(self, data: bytes, record: dict[str, Any]) -> None:
        """Refuse a body that is not what encoding its record gives back.

        fastavro reads leniently: a boolean byte other than 0 or 1 as True, a negative union index
        as a branch counted from the end, a string that is not the minimal encoding. Java and Go
        readers refuse such bytes, and a site must not learn them: re-encoding the decoded record
        and comparing bodies catches every such case (every standard Avro writer encodes canonically;
        our schemas have no arrays or maps, whose block structure could legitimately differ).
        """
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, self.schema, record)
        except Exception as exc:  # a value fastavro read but cannot write back is no valid record
            raise SerializationError(f"body of {self.name} decodes to values that do not re-encode: {exc}") from exc
        if buf.getvalue() != data[HEADER.size :]:
            at = next(
                (i for i, (a, b) in enumerate(zip(buf.getvalue(), data[HEADER.size :], strict=False)) if a != b),
                min(len(buf.getvalue()), len(data) - HEADER.size),
            )
            raise SerializationError(
                f"body of {self.name} is not valid Avro at byte {at + HEADER.size} "
                "(a boolean other than 0/1, a union index out of range, or a non-minimal encoding)"
            )
