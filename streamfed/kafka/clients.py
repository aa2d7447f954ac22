"""librdkafka settings: StreamFed's defaults, then the topology's settings, then the caller's."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streamfed.topology.spec import KafkaSpec

log = logging.getLogger(__name__)


def _base(spec: KafkaSpec) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": spec.bootstrap_servers}
    conf.update(spec.settings)
    return conf


def producer_config(spec: KafkaSpec, **extra: Any) -> dict[str, Any]:
    conf = {
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": spec.max_message_bytes,
    }
    conf.update(_base(spec))
    conf.update(spec.producer_settings)
    conf.update(extra)
    return conf


def consumer_config(spec: KafkaSpec, group_id: str | None, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.max.bytes": max(spec.max_message_bytes, 52428800),
        "max.partition.fetch.bytes": spec.max_message_bytes,
        "receive.message.max.bytes": max(spec.max_message_bytes, 52428800) + 1_000_000,
    }
    if group_id is not None:
        conf["group.id"] = group_id
    else:
        conf["group.id"] = "streamfed-unused"  # librdkafka requires one even for assign()-only readers
    conf.update(_base(spec))
    conf.update(spec.consumer_settings)
    conf.update(extra)
    return conf


def _logger(name: str) -> logging.Logger:
    return logging.getLogger(f"streamfed.librdkafka.{name}")


def make_producer(spec: KafkaSpec, **extra: Any) -> Producer:
    return Producer(producer_config(spec, **extra), logger=_logger("producer"))


def make_consumer(spec: KafkaSpec, group_id: str | None, **extra: Any) -> Consumer:
    return Consumer(consumer_config(spec, group_id, **extra), logger=_logger("consumer"))


def admin_client(spec: KafkaSpec) -> AdminClient:
    return AdminClient(_base(spec))
