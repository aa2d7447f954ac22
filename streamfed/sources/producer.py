"""Produce records to site topics at a set rate."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from streamfed import metrics as M
from streamfed.kafka.resilient import ResilientProducer
from streamfed.serde.avro import AvroCodec
from streamfed.serde.registry import registry_for
from streamfed.topology.spec import KafkaSpec

log = logging.getLogger(__name__)


def pace(rate: float, tick_s: float = 0.05, stop: threading.Event | None = None) -> Iterator[tuple[int, float]]:
    """Yield (records due now, seconds since start) so that ``rate`` records/s are produced."""
    t0 = time.monotonic()
    sent = 0.0
    while stop is None or not stop.is_set():
        now = time.monotonic() - t0
        due = int(rate * now - sent)
        if due > 0:
            sent += due
            yield due, now
        time.sleep(tick_s)


class RecordProducer:
    """Encodes records with the topology's schema and produces them keyed by their id.

    Records the broker does not take (it is away, or the producer hit a fatal error) are kept, at
    most ``max_pending``, and produced again once it is back; ``errors`` counts those dropped beyond.
    """

    def __init__(
        self, kafka: KafkaSpec, schema: str, topology: str, key_field: str, max_pending: int = 200_000
    ) -> None:
        self.codec = AvroCodec(schema, registry_for(kafka))
        self.producer = ResilientProducer(kafka, f"{topology} records", max_pending=max_pending, on_drop=self._dropped)
        self.topology = topology
        self.key_field = key_field
        self.errors = 0

    def _dropped(self) -> None:
        self.errors += 1

    def send(self, topic: str, site: str, records: list[dict[str, Any]]) -> None:
        for rec in records:
            key = str(rec.get(self.key_field, "")).encode()
            self.producer.produce(topic, key=key, value=self.codec.encode(rec))
        self.producer.poll(0)
        M.PRODUCED.labels(topology=self.topology, site=site).inc(len(records))

    def raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.producer.produce(topic, key=key, value=value)

    def flush(self, timeout_s: float = 30.0) -> int:
        return int(self.producer.flush(timeout_s))


Sender = Callable[[str, str, list[dict[str, Any]]], None]
