"""The aggregator's transactional producer: versions, lineage, rejections and consumed offsets go out
in one Kafka transaction, or not at all.

:class:`TransactionalWriter` opens a transaction on demand, produces into it, commits it together
with the consumer's offsets (each step bounded in time), rolls it back, and replaces a producer that
is fenced, fatal or stuck (a new one with the same ``transactional.id`` fences the old one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamfed.kafka.clients import make_producer
from streamfed.kafka.deadletters import DeadLetterSink
from streamfed.serde.registry import registry_for
from streamfed.topology.spec import KafkaSpec

log = logging.getLogger(__name__)

# A transaction step that has not finished in this time is rolled back and redone (each takes
# milliseconds on a healthy broker); a longer wait would only stall versions while updates pile up.
TXN_TIMEOUT_S = 15.0


def bounded(call: Callable[[], None], timeout_s: float) -> None:
    """Run a blocking client call, but give up after ``timeout_s`` (+ 5 s grace).

    librdkafka's send_offsets_to_transaction can ignore its own timeout when the group coordinator
    goes away (confluentinc/librdkafka#5456, #5511): seen here when the broker restarts. A call that
    does not return raises a *fatal* error, so the caller replaces the producer (a new one with the
    same transactional.id fences the stuck one) instead of waiting forever.
    """
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller's thread
            box["exc"] = exc

    worker = threading.Thread(target=run, name="streamfed-txn-call", daemon=True)
    worker.start()
    worker.join(timeout_s + 5.0)
    if worker.is_alive():
        raise KafkaException(
            KafkaError(KafkaError._TIMED_OUT, f"transaction call did not return in {timeout_s + 5.0:.0f} s", fatal=True)
        )
    if "exc" in box:
        raise box["exc"]


class TransactionalWriter:
    """One transactional producer and the state of its open transaction."""

    def __init__(self, kafka: KafkaSpec, transactional_id: str, rejected_topic: str, stop: threading.Event) -> None:
        self.kafka = kafka
        self.transactional_id = transactional_id
        self.rejected_topic = rejected_topic
        self.stop = stop
        self.producer: Producer | None = None
        self.rejects: DeadLetterSink | None = None
        self.open = False
        self.started = 0.0

    def _new(self) -> None:
        prod = make_producer(self.kafka, **{"transactional.id": self.transactional_id})
        prod.init_transactions(60)
        self.producer = prod
        self.rejects = DeadLetterSink(
            prod,
            self.rejected_topic,
            "aggregator",
            None,
            registry_for(self.kafka),
            max_bytes=self.kafka.max_message_bytes,
        )

    def start(self) -> None:
        self._new()

    def replace(self) -> None:
        """A new transactional producer (fencing the old one); retried until the broker answers."""
        while True:
            try:
                self._new()
                return
            except KafkaException as exc:
                log.warning("cannot initialise the transactional producer (%s); retrying", exc.args[0])
                if self.stop.wait(1.0):
                    raise

    def ensure(self) -> None:
        """Begin a transaction unless one is open."""
        if self.open:
            return
        assert self.producer is not None
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:  # the producer is in a fatal or abortable state
            log.warning("cannot begin a transaction (%s); recreating the transactional producer", exc.args[0])
            self.replace()
            self.producer.begin_transaction()
        self.open = True
        self.started = time.monotonic()

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.ensure()
        assert self.producer is not None
        self.producer.produce(topic, key=key, value=value)

    def write_alone(self, topic: str, key: bytes, value: bytes) -> None:
        """One record in a transaction of its own, committed now (no transaction may be open)."""
        assert self.producer is not None and not self.open
        self.producer.begin_transaction()
        self.producer.produce(topic, key=key, value=value)
        self.producer.commit_transaction(60)

    def commit(self, offsets: list[TopicPartition], consumer: Consumer) -> None:
        """Send ``offsets`` into the open transaction and commit it; raises KafkaException on failure."""
        self.ensure()
        producer = self.producer
        assert producer is not None
        if offsets:
            meta = consumer.consumer_group_metadata()
            bounded(lambda: producer.send_offsets_to_transaction(offsets, meta, TXN_TIMEOUT_S), TXN_TIMEOUT_S)
        producer.commit_transaction(TXN_TIMEOUT_S)
        self.open = False

    def rollback(self, exc: KafkaException) -> None:
        """Abort the open transaction after ``exc``; a fatal, fenced or stuck producer is replaced."""
        err = exc.args[0]
        assert self.producer is not None
        if isinstance(err, KafkaError) and err.fatal():
            self.replace()
        else:
            try:
                # Bounded: a producer that cannot abort in 15 s is replaced (re-init fences the old
                # transaction), rather than stalling the aggregator while updates pile up.
                self.producer.abort_transaction(15)
            except KafkaException as abort_exc:
                log.warning("abort failed (%s); recreating the transactional producer", abort_exc)
                self.replace()
        self.open = False

    def abort(self, timeout_s: float = 30) -> None:
        if self.producer is not None and self.open:
            self.producer.abort_transaction(timeout_s)
        self.open = False
