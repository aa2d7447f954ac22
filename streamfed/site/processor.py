"""The site processor: consume -> validate -> features -> predict-then-learn -> trigger -> publish.

Raw records never leave this process. What leaves is a signed, accounted step built from noised
sums of clipped per-record gradients (made by :class:`~streamfed.site.learner.SiteLearner`), and
dead letters of records that could not be used.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamfed import metrics as M
from streamfed.errors import SerializationError
from streamfed.kafka.clients import make_consumer, raise_if_fatal, site_group
from streamfed.kafka.deadletters import DeadLetterSink
from streamfed.kafka.resilient import ResilientProducer
from streamfed.serde.avro import AvroCodec
from streamfed.site.batch import learn_batch
from streamfed.site.learner import SiteLearner, SiteReport
from streamfed.site.secure import SecureSite
from streamfed.topology.spec import KafkaSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteTopics:
    transactions: str
    updates: str
    models: str
    dead_letters: str
    secagg: str | None = None  # secure aggregation's requests and reveals


class SiteProcessor:
    """One site's stream processor around a :class:`SiteLearner`.

    Build it with :func:`streamfed.site.build_site` from a topology, then ``run`` it; runs are
    bounded by ``max_records``/``timeout_s`` or the stop event, and return a :class:`SiteReport`.

    Updates the broker did not take (it is away past ``message.timeout.ms``, or the producer hit a
    fatal error) are kept, at most ``max_pending_updates`` of them, and produced again in order, with
    their sequence numbers, once it is back; the producers rebuild themselves after such failures.
    """

    max_pending_updates = 1000

    def __init__(
        self,
        learner: SiteLearner,
        kafka: KafkaSpec,
        topics: SiteTopics,
        codec: AvroCodec,
        batch_size: int = 2000,
        tamper: Callable[[np.ndarray], np.ndarray] | None = None,
        secure: SecureSite | None = None,
    ) -> None:
        self.learner = learner
        self.secure = secure
        self.site_id = learner.site_id
        self.kafka = kafka
        self.topics = topics
        self.codec = codec
        self.update_codec = AvroCodec("model_update", codec.registry)
        self.version_codec = AvroCodec("model_version", codec.registry)
        self.batch_size = batch_size
        self.tamper = tamper
        self.stop_event = threading.Event()
        self._labels = learner.labels
        self._consumer: Consumer | None = None
        self._models: Consumer | None = None
        self._producer: ResilientProducer | None = None
        self._updates: ResilientProducer | None = None
        self._dead: DeadLetterSink | None = None
        self._secagg: Consumer | None = None
        self._secagg_codec = AvroCodec("secagg_message", codec.registry)
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ledger-{self.site_id}")
        # updates whose ledger lines are being fsynced: (done, record, offsets read up to its window)
        self._durable: deque[tuple[Future[None], dict[str, Any], list[TopicPartition]]] = deque()
        self._read: dict[tuple[str, int], int] = {}  # next offset to read of each owned partition read from
        # updates durable, waiting for their offset commit: (commits that must have completed, record)
        self._committing: deque[tuple[int, dict[str, Any]]] = deque()
        self._commits_sent = self._commits_done = self._commits_forced = 0
        self._last_sent: list[TopicPartition] = []  # the offsets of the last asynchronous commit

    @property
    def report(self) -> SiteReport:
        return self.learner.report

    # -- Kafka plumbing -------------------------------------------------------------------------
    def _stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
            for topic in stats.get("topics", {}).values():
                for pid, part in topic.get("partitions", {}).items():
                    lag = part.get("consumer_lag", -1)
                    if pid != "-1" and lag >= 0:
                        M.SITE_LAG.labels(**self._labels, partition=pid).set(lag)
        except (ValueError, AttributeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)

    def _open(self) -> None:
        self._consumer = make_consumer(
            self.kafka,
            site_group(self.learner.topology, self.site_id),
            **{"statistics.interval.ms": 1000, "stats_cb": self._stats, "on_commit": self._commit_done},
        )
        self._consumer.subscribe([self.topics.transactions], on_revoke=self._revoked)
        self._models = make_consumer(self.kafka, None)
        self._models.assign([TopicPartition(self.topics.models, 0, OFFSET_BEGINNING)])
        self._producer = ResilientProducer(
            self.kafka, f"site {self.site_id}", max_pending=100_000, on_recreate=self._recreated
        )
        self._updates = ResilientProducer(
            self.kafka,
            f"site {self.site_id} updates",
            max_pending=self.max_pending_updates,
            max_in_flight=1,  # strict order: a re-sent update never lands behind a later one
            on_drop=self._update_dropped,
            on_recreate=self._recreated,
        )
        self._dead = DeadLetterSink(
            self._producer,
            self.topics.dead_letters,
            "site",
            self.site_id,
            self.codec.registry,
            max_bytes=self.kafka.max_message_bytes,
        )
        if self.secure is not None:
            assert self.topics.secagg is not None
            self._secagg = make_consumer(self.kafka, None)
            self._secagg.assign([TopicPartition(self.topics.secagg, 0, OFFSET_BEGINNING)])

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what was read of partitions taken away, before another member of the group reads on.

        Their records already read are in this process's windows and are released by it alone; the
        next owner starts after them, so no record reaches a release of two processes (workers of
        one site, ``streamfed site --worker``) or one release twice.
        """
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in gone:
            self._read.pop(key, None)
        # no commit of an earlier update moves them again: their offsets are their new owner's now
        for read in [*(r for _, _, r in self._durable), self._last_sent]:
            read[:] = [tp for tp in read if (tp.topic, tp.partition) not in gone]
        try:
            read = [tp for tp in consumer.position(partitions) if tp.offset >= 0]
            if read:
                consumer.commit(offsets=read, asynchronous=False)
        except KafkaException as exc:  # the group moved on already: the next owner re-reads from the last commit
            log.warning("site=%s could not commit revoked partitions: %s", self.site_id, exc)

    def _recreated(self) -> None:
        self.report.producer_recreations += 1
        M.SITE_PRODUCER_RECREATED.labels(**self._labels).inc()

    def _update_dropped(self) -> None:
        self.report.updates_dropped += 1
        M.SITE_UPDATES_DROPPED.labels(**self._labels).inc()

    def _poll_producers(self) -> None:
        for prod in (self._producer, self._updates):
            if prod is not None:
                prod.poll(0)
        if self._updates is not None:
            self.report.updates_pending = self._updates.pending
            M.SITE_UPDATES_PENDING.labels(**self._labels).set(self._updates.pending)

    def _close(self) -> None:
        if (self._durable or self._committing) and self._updates is not None and self._consumer is not None:
            try:  # what was made durable before the stop is released before the producer flushes
                self._release_durable(wait=True)
            except Exception:
                left = len(self._durable) + len(self._committing)
                log.exception("site=%s could not release %d update(s) at shutdown", self.site_id, left)
                self._durable.clear()
                self._committing.clear()
        if self._updates is not None:
            left = self._updates.flush(10)
            self.report.updates_pending = left
            M.SITE_UPDATES_PENDING.labels(**self._labels).set(left)
            if left:
                log.warning("site=%s stops with %d update(s) not delivered", self.site_id, left)
        if self._producer is not None:
            left = self._producer.flush(10)
            self.report.dead_letters_undelivered = left
            if left:
                log.warning("site=%s stops with %d dead letter(s) not delivered", self.site_id, left)
        for c in (self._consumer, self._models, self._secagg):
            if c is not None:
                c.close()
        self._consumer = self._models = self._secagg = None

    # -- the loop -------------------------------------------------------------------------------
    def run(self, max_records: int | None = None, timeout_s: float | None = None) -> SiteReport:
        """Process until stopped, ``max_records`` consumed, or ``timeout_s`` passed."""
        self._open()
        assert self._consumer is not None
        M.ready(self.learner.topology, "site", self.site_id)
        t0 = time.monotonic()
        batch = self.batch_size  # windows are cut by position inside the learner, whatever the batch
        try:
            while not self.stop_event.is_set():
                if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                    break
                if max_records is not None and self.report.records + self.report.dead_letters >= max_records:
                    break
                msgs = self._consumer.consume(batch, 0.1)
                if msgs:
                    self.process(msgs)
                self._poll_models()
                if self.secure is not None:
                    self._poll_secagg()
                self.learner.maybe_step()
                while self.learner.due() and self.publish():
                    pass
                self._release_durable()
                self._poll_producers()
        finally:
            self.report.seconds = time.monotonic() - t0
            self.learner.export_quality()  # the report's AUCs as of the last record
            self._close()
        return self.report

    def process(self, msgs: list[Message]) -> None:
        """Decode and validate one batch; bad records go to the dead-letter topic, the rest are learned."""
        live: list[Message] = []
        read = self._read  # next offset of each partition: messages come in offset order in each
        for msg in msgs:
            err = msg.error()
            if err is not None:
                raise_if_fatal(err, f"site {self.site_id}")
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("site=%s consumer error: %s", self.site_id, err)
                continue
            live.append(msg)
            read[(msg.topic(), msg.partition())] = msg.offset() + 1  # type: ignore[operator]
        values, stamps = [m.value() for m in live], [m.timestamp()[1] for m in live]
        for rejected in learn_batch(self.learner, self.codec, values, stamps):
            self._dead_letter(live[rejected.index], rejected.reason, rejected.detail)

    def _dead_letter(self, msg: Message, reason: str, detail: str) -> None:
        assert self._dead is not None
        self._dead.send(msg, reason, detail)
        self.learner.count_dead_letter(reason)

    def publish(self) -> bool:
        """Make the window's update durable in the ledger, commit offsets, then produce it.

        A crash can lose an update but never release a record more than ``k`` times or reuse a
        sequence number. The ledger's fsync (milliseconds on some disks, once per update) runs on
        a thread while the site goes on learning; the update waits for it, then for the commit of
        the offsets read up to its window's end (kept from the messages processed, per partition
        owned), and only then is produced, in sequence order (:meth:`_release_durable`).
        """
        assert self._updates is not None and self._consumer is not None
        if self.secure is not None and not self.secure.can_publish(self.learner.base_version):
            return False  # this buffer has our update; keep learning until the next version
        secure = self.secure
        record = self.learner.make_update(
            self.tamper, secure.encode if secure is not None else None, merge=secure is not None, durable=False
        )
        if record is None:
            return False
        read = [TopicPartition(topic, partition, offset) for (topic, partition), offset in self._read.items()]
        self._durable.append((self._syncer.submit(self.learner.ledger.sync), record, read))
        self._release_durable(wait=secure is not None)  # secure aggregation: one update per version, now
        return True

    def _release_durable(self, wait: bool = False) -> None:
        """Commit, then produce, in order, the updates whose ledger lines are durable (all of them now
        with ``wait``).

        Each durable update's offsets are committed asynchronously; it is produced once that commit
        (and every one before it: the coordinator answers them in order) has completed, which
        ``on_commit`` reports while the site consumes. With ``wait`` a synchronous commit after
        them stands for all. A revocation commits synchronously too, after the asynchronous ones
        already sent, and takes its partitions out of the offsets of updates not yet committed: no
        commit of an older update lands after the revocation's.
        """
        assert self._updates is not None and self._consumer is not None
        while self._durable and (wait or self._durable[0][0].done()):
            synced, record, read = self._durable.popleft()
            synced.result()  # an fsync that failed raises: never release what the ledger may not hold
            if read:
                try:
                    self._consumer.commit(offsets=read, asynchronous=True)
                    self._commits_sent += 1
                    self._last_sent = read
                except KafkaException as exc:  # not fatal, as a failed commit is not
                    log.debug("site=%s offset commit before publish: %s", self.site_id, exc)
            self._committing.append((self._commits_sent, record))
        if wait and self._committing and self._commits_done < self._commits_sent:
            try:  # lands after the asynchronous ones: when it returns, they have completed
                if self._last_sent:
                    self._consumer.commit(offsets=self._last_sent, asynchronous=False)
            except KafkaException as exc:
                log.debug("site=%s offset commit before publish: %s", self.site_id, exc)
            self._commits_forced = self._commits_sent
        done = max(self._commits_done, self._commits_forced)
        while self._committing and self._committing[0][0] <= done:
            _, record = self._committing.popleft()
            value = self.update_codec.encode(record)
            self._updates.produce(self.topics.updates, key=self.site_id.encode(), value=value)
            self._updates.poll(0)

    def _commit_done(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """``on_commit`` of an asynchronous commit (served while the site consumes)."""
        self._commits_done += 1
        if err is not None:
            log.debug("site=%s offset commit before publish: %s", self.site_id, err)

    # -- secure aggregation ---------------------------------------------------------------------
    def _poll_secagg(self) -> None:
        """Answer the aggregator's recovery requests with signed reveals."""
        assert self._secagg is not None and self.secure is not None and self._producer is not None
        topic = self.topics.secagg
        assert topic is not None
        for msg in self._secagg.consume(100, 0):
            if msg.error() is not None:
                continue
            try:
                rec = self._secagg_codec.decode(msg.value())
            except SerializationError as exc:
                log.warning("site=%s ignores an unreadable secagg message at %d: %s", self.site_id, msg.offset(), exc)
                continue
            reveal = self.secure.answer(rec, self.learner.base_version)
            if reveal is not None:
                self._producer.produce(
                    topic, key=str(reveal["buffer"]).encode(), value=self._secagg_codec.encode(reveal)
                )
                self._producer.poll(0)

    # -- global versions ------------------------------------------------------------------------
    def _poll_models(self) -> None:
        assert self._models is not None
        for msg in self._models.consume(100, 0):
            if msg.error() is not None:
                continue
            try:
                wanted = self.learner.wanted_version(self.version_codec, msg.value())
            except (SerializationError, KeyError) as exc:
                log.warning(
                    "site=%s ignores an unreadable model version at offset %d: %s", self.site_id, msg.offset(), exc
                )
                continue
            if wanted is not None:
                self.learner.rebase(*wanted)
