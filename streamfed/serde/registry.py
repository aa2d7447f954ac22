"""Schema ids from a Confluent-API Schema Registry, for the Confluent wire format.

With ``kafka.schema_registry.url`` set, every codec of the topology takes its schema ids from the
registry: a schema is registered (or found, when it is there already) under the subject of its
record's full name (Confluent's ``RecordNameStrategy``, e.g. ``streamfed.CardTransaction``), and
the id the registry gives it is the one written in front of each record. A record that carries any
other id is read with the writer schema the registry holds under that id, resolved to ours, so
records from Java or Go producers with standard Avro serializers are read, and theirs read ours.
Ids of the local fingerprint scheme still decode (records written before the registry was set).

The client is confluent-kafka's ``SchemaRegistryClient`` (extra ``streamfed[registry]``); a
``mock://`` url gives the client library's own in-process registry, shared by every codec of this
process that names it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import fastavro

from streamfed.errors import ConfigError, SchemaError
from streamfed.serde.avro import SchemaRegistry, default_registry
from streamfed.topology.loader import SCHEMA_DIR, schema_file
from streamfed.topology.spec import KafkaSpec, SchemaRegistrySpec

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_REGISTRIES: dict[tuple[str, tuple[tuple[str, Any], ...]], ConfluentSchemaRegistry] = {}


class ConfluentSchemaRegistry(SchemaRegistry):
    """A :class:`SchemaRegistry` whose ids are those of a Confluent-API Schema Registry."""

    def __init__(self, client: Any, url: str, schema_dir: Path = SCHEMA_DIR) -> None:
        super().__init__(schema_dir)
        self.client = client
        self.url = url
        self._missing: set[int] = set()

    def load(self, name: str) -> tuple[int, Any]:
        """Register ``name``'s schema (idempotent) and return ``(registry id, parsed schema)``."""
        if name in self._by_name:
            return super().load(name)
        _, parsed = super().load(name)  # parses it, and keeps the local ids of it and its history
        from confluent_kafka.schema_registry import Schema

        subject = parsed["name"]
        text = schema_file(name, self.schema_dir).read_text()
        try:
            schema_id = int(self.client.register_schema(subject, Schema(text, "AVRO")))
        except Exception as exc:  # SchemaRegistryError (refused) or a transport error (unreachable)
            raise SchemaError(
                f"schema registry {self.url} did not register subject {subject}: {exc}; check the url "
                "(kafka.schema_registry.url), its credentials, and the subject's compatibility setting"
            ) from exc
        _, _, fp = self._by_name[name]
        self._by_name[name] = (schema_id, parsed, fp)
        self._by_id[schema_id] = parsed
        log.info("schema %s is id %d in the registry at %s", subject, schema_id, self.url)
        return schema_id, parsed

    def by_id(self, schema_id: int) -> Any | None:
        """The writer schema of ``schema_id``: known here, or fetched from the registry (None: no such
        Avro schema there, or the registry did not answer; the record then goes to the dead letters)."""
        known = super().by_id(schema_id)
        if known is not None or schema_id in self._missing:
            return known
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            log.warning("schema registry %s has no schema %d: %s", self.url, schema_id, exc)
            self._missing.add(schema_id)
            return None
        except Exception as exc:  # unreachable: try again with a later record
            log.warning("schema registry %s did not answer for schema %d: %s", self.url, schema_id, exc)
            return None
        if (schema.schema_type or "AVRO") != "AVRO" or schema.references:
            log.warning("schema %d in %s is not a self-contained Avro schema; not read", schema_id, self.url)
            self._missing.add(schema_id)
            return None
        try:
            parsed = fastavro.parse_schema(json.loads(schema.schema_str))
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            log.warning("schema %d in %s does not parse: %s", schema_id, self.url, exc)
            self._missing.add(schema_id)
            return None
        self._by_id[schema_id] = parsed
        return parsed


def registry_for(kafka: KafkaSpec | None) -> SchemaRegistry:
    """The schema registry of a topology's Kafka settings: its Schema Registry's, or local ids."""
    spec = None if kafka is None else kafka.schema_registry
    if spec is None:
        return default_registry()
    return confluent_registry(spec)


def confluent_registry(spec: SchemaRegistrySpec) -> ConfluentSchemaRegistry:
    """One :class:`ConfluentSchemaRegistry` per url and settings in this process."""
    key = (spec.url, tuple(sorted(spec.config.items())))
    with _LOCK:
        reg = _REGISTRIES.get(key)
        if reg is None:
            try:
                from confluent_kafka.schema_registry import SchemaRegistryClient
            except ImportError as exc:
                raise ConfigError(
                    f"kafka.schema_registry needs confluent-kafka's Schema Registry client ({exc}); "
                    "install it with: pip install 'streamfed[registry]'"
                ) from exc
            client = SchemaRegistryClient.new_client({"url": spec.url, **spec.config})
            reg = _REGISTRIES[key] = ConfluentSchemaRegistry(client, spec.url)
        return reg
