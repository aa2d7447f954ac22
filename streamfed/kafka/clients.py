"""librdkafka settings: StreamFed's defaults, then the topology's settings, then the caller's."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from streamfed.errors import BrokerError
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


class LibrdkafkaLog:
    """librdkafka's log lines into ``logging``: at debug (a broker away is retried, and says so once
    per second), fatal ones at warning. Errors that matter reach the caller as exceptions."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(f"streamfed.librdkafka.{name}")

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.WARNING if level >= logging.CRITICAL else logging.DEBUG, msg, *args, **kwargs)


def check_reachable(spec: KafkaSpec, timeout_s: float = 8.0) -> None:
    """Fail in ``timeout_s`` with one line naming the address when no broker answers there."""
    try:
        admin_client(spec).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        reason = err.str() if isinstance(err, KafkaError) else str(err)
        raise BrokerError(
            f"no Kafka broker answered at {spec.bootstrap_servers} within {timeout_s:.0f} s ({reason}); "
            "check that one is running there and the address (--bootstrap, or kafka.bootstrap_servers "
            "in the topology)"
        ) from None


def make_producer(spec: KafkaSpec, **extra: Any) -> Producer:
    return Producer(producer_config(spec, **extra), logger=LibrdkafkaLog("producer"))


def make_consumer(spec: KafkaSpec, group_id: str | None, **extra: Any) -> Consumer:
    return Consumer(consumer_config(spec, group_id, **extra), logger=LibrdkafkaLog("consumer"))


def site_group(topology: str, site_id: str) -> str:
    """The consumer group of a site's processor."""
    return f"streamfed.{topology}.site.{site_id}"


def aggregator_group(topology: str) -> str:
    """The consumer group (and transactional id) of a topology's aggregator."""
    return f"streamfed.{topology}.aggregator"


def raise_if_fatal(err: KafkaError, who: str) -> None:
    """Stop on a fatal consumer error instead of logging it for ever.

    librdkafka reports one as ``_FATAL`` (whose ``fatal()`` is False) naming the broker's reason.
    """
    if err.fatal() or err.code() == KafkaError._FATAL:
        raise BrokerError(f"{who}: fatal consumer error: {err}")


def admin_client(spec: KafkaSpec) -> AdminClient:
    return AdminClient(_base(spec), logger=LibrdkafkaLog("admin"))
