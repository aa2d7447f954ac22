"""Dead letters: a record (or update) that was not used goes to a topic with its reason."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Message, Producer

from streamfed.serde.avro import AvroCodec, SchemaRegistry

log = logging.getLogger(__name__)


class DeadLetterSink:
    def __init__(
        self,
        producer: Producer,
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

    def record(self, msg: Message, reason: str, detail: str) -> dict[str, object]:
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

    def send(self, msg: Message, reason: str, detail: str) -> None:
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
