"""Model versions and lineage: read from Kafka (deduplicated) or the aggregator's local cache."""

from streamfed.registry.local import LocalRegistry
from streamfed.registry.reader import dedupe_versions, read_latest, read_topic

__all__ = ["LocalRegistry", "dedupe_versions", "read_latest", "read_topic"]
