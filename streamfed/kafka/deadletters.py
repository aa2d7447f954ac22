"""Dead letters: a record (or update) that was not used goes to a topic with its reason."""

from __future__ import annotations

import hashlib
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


# Room left in a message for the record batch around a dead letter (headers, framing).
OVERHEAD_BYTES = 64 << 10


class DeadLetterSink:
    """Encodes a rejected message with its reason as a ``dead_letter`` record and produces it, keyed by site.

    A dead letter never exceeds ``max_bytes`` (the topology's ``kafka.max_message_bytes``): a message
    as large as the limit, wrapped with its reason, would be refused by the broker and, kept for
    retry, hold up every later dead letter. Such a letter carries no value, and its detail names the
    value's size and SHA-256 instead (``truncated`` counts them).
    """

    def __init__(
        self,
        producer: LetterProducer,
        topic: str,
        component: str,
        site_id: str | None,
        registry: SchemaRegistry | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.component = component
        self.site_id = site_id
        self.codec = AvroCodec("dead_letter", registry)
        self.max_bytes = None if max_bytes is None else max(1024, max_bytes - OVERHEAD_BYTES)
        self.truncated = 0

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
        rec = self.record(msg, reason, detail)
        blob = self.codec.encode(rec)
        if self.max_bytes is not None and len(blob) > self.max_bytes:
            value = rec["value"] if isinstance(rec["value"], bytes) else b""
            note = (
                f" [value of {len(value)} bytes left out: the dead letter would exceed {self.max_bytes} bytes; "
                f"sha256 {hashlib.sha256(value).hexdigest()}]"
            )
            rec.update(value=None, key=(rec["key"] or b"")[:1024] or None, detail=(detail[:1000] + note)[:2000])
            blob = self.codec.encode(rec)
            self.truncated += 1
            log.warning(
                "%s dead letter of %s[%s]@%s without its %d-byte value",
                self.component,
                msg.topic(),
                msg.partition(),
                msg.offset(),
                len(value),
            )
        self.producer.produce(self.topic, key=(self.site_id or self.component).encode(), value=blob)
