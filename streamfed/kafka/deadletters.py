"""Dead letters: a record (or update) that was not used goes to a topic with its reason."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from streamfed.serde.avro import AvroCodec, SchemaRegistry

log = logging.getLogger(__name__)


class SourceMessage(Protocol):
    """The message a dead letter is about, as a confluent-kafka ``Message`` describes itself."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class LetterProducer(Protocol):
    """Where dead letters are produced: a confluent-kafka ``Producer``, or an adapter of another client."""

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None: ...


class DeadLetterSink:
    """Encodes a rejected message with its reason as a ``dead_letter`` record and produces it, keyed by site."""

    def __init__(
        self,
        producer: LetterProducer,
        topic: str,
        component: str,
        site_id: str | None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.component = component
        self.site_id = site_id
        self.codec = AvroCodec("dead_letter", registry)

    def record(self, msg: SourceMessage, reason: str, detail: str) -> dict[str, object]:
        return {
            "component": self.component,
            "site_id": self.site_id,
            "source_topic": msg.topic() or "",
            "partition": int(msg.partition() or 0),
            "offset": int(msg.offset() or 0),
            "key": msg.key(),
            "value": msg.value(),
            "reason": reason,
            "detail": detail[:2000],
            "created_ms": int(time.time() * 1000),
        }

    def send(self, msg: SourceMessage, reason: str, detail: str) -> None:
        log.info(
            "%s dead letter %s[%s]@%s: %s: %s",
            self.component,
            msg.topic(),
            msg.partition(),
            msg.offset(),
            reason,
            detail,
        )
        self.producer.produce(
            self.topic,
            key=(self.site_id or self.component).encode(),
            value=self.codec.encode(self.record(msg, reason, detail)),
        )
