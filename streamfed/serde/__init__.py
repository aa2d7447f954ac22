"""Avro codecs over schemas/avro (fastavro) in the Confluent wire format, and tensors <-> bytes."""

from streamfed.serde.avro import AvroCodec, SchemaRegistry, default_registry
from streamfed.serde.tensors import params_from_bytes, params_to_bytes, sha256_hex

__all__ = ["AvroCodec", "SchemaRegistry", "default_registry", "params_from_bytes", "params_to_bytes", "sha256_hex"]
