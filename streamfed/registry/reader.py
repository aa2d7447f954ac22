"""Read a topic from the beginning to its end, and deduplicate versions.

On brokers that do not hide aborted transactions (the embedded one), a version whose transaction
was aborted stays visible and is later written again by the restarted aggregator: readers keep
the *last* record of each version number.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streamfed.errors import BrokerError, SerializationError
from streamfed.kafka.clients import admin_client, make_consumer
from streamfed.serde.avro import AvroCodec
from streamfed.topology.spec import KafkaSpec

log = logging.getLogger(__name__)


def open_from_start(kafka: KafkaSpec, topic: str) -> tuple[Consumer, list[int]]:
    """A group-less read_committed consumer on every partition of ``topic`` from its start, which
    reports each partition's end; raises :class:`BrokerError` when the topic does not exist."""
    md = admin_client(kafka).list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise BrokerError(f"topic {topic} does not exist ({t.error if t else 'no metadata'})")
    parts = sorted(t.partitions)
    consumer = make_consumer(kafka, None, **{"enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    return consumer, parts


def read_topic(
    kafka: KafkaSpec, topic: str, codec: AvroCodec | None, timeout_s: float = 30.0, idle_s: float = 5.0
) -> list[tuple[Any, dict[str, Any] | bytes | None]]:
    """Every message of ``topic`` as (message, decoded record or raw value), in partition order.

    Stops when every partition has reported its end since its last message; ``idle_s`` without
    any message or end-of-partition event is only a fallback for brokers that never report one.
    """
    consumer, parts = open_from_start(kafka, topic)
    out: list[tuple[Any, dict[str, Any] | bytes | None]] = []
    done: set[int] = set()
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while len(done) < len(parts) and time.monotonic() < deadline and time.monotonic() - last < idle_s:
            for msg in consumer.consume(1000, 0.2):
                last = time.monotonic()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done.add(int(msg.partition() or 0))
                    continue
                done.discard(msg.partition())
                if codec is None:
                    out.append((msg, msg.value()))
                    continue
                try:
                    out.append((msg, codec.decode(msg.value())))
                except SerializationError as exc:
                    log.warning("%s[%d]@%d does not decode: %s", topic, msg.partition(), msg.offset(), exc)
    finally:
        consumer.close()
    return out


def dedupe_versions(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last record of each version number, sorted by version."""
    by_version: dict[int, dict[str, Any]] = {}
    for rec in records:
        by_version[int(rec["version"])] = rec
    return [by_version[v] for v in sorted(by_version)]


def read_latest(kafka: KafkaSpec, topic: str, codec: AvroCodec, key: str) -> dict[str, Any] | None:
    """The latest (highest, last-written) version record for ``key`` on the models topic."""
    recs = [r for m, r in read_topic(kafka, topic, codec) if isinstance(r, dict) and (m.key() or b"").decode() == key]
    deduped = dedupe_versions(recs)
    return deduped[-1] if deduped else None
