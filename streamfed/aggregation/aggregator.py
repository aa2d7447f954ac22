"""The Aggregator service: verified updates in, model versions out, exactly once.

Updates are read ``read_committed``; each is checked (:mod:`~streamfed.aggregation.verify`) or sent
to the rejected topic with its reason. Every ``buffer_size`` accepted updates FedBuff combines them
and the server optimizer steps (:mod:`~streamfed.aggregation.fedbuff`); the version, its lineage
record and the consumed offsets go in one Kafka transaction
(:mod:`~streamfed.aggregation.transactions`), bracketed by the local checkpoint (``checkpoint.py``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streamfed import metrics as M
from streamfed.aggregation.checkpoint import AggregatorState, Checkpoint
from streamfed.aggregation.fedbuff import FedBuff, PendingUpdate
from streamfed.aggregation.records import ModelInfo, VersionMeta, cost, lineage_record, version_record
from streamfed.aggregation.secure import SecureBuffer
from streamfed.aggregation.transactions import TransactionalWriter
from streamfed.aggregation.verify import Rejected, UpdateChecks
from streamfed.energy import CpuClock
from streamfed.errors import AggregationError, SerializationError
from streamfed.kafka.clients import aggregator_group, make_consumer, make_producer, raise_if_fatal
from streamfed.privacy.signing import UpdateVerifier
from streamfed.registry.local import LocalRegistry
from streamfed.registry.reader import read_latest
from streamfed.serde.avro import AvroCodec
from streamfed.serde.registry import registry_for
from streamfed.topology.spec import AggregationSpec, KafkaSpec

log = logging.getLogger(__name__)

__all__ = ["Aggregator", "AggregatorReport", "AggregatorTopics", "ModelInfo", "Rejected"]


@dataclass(frozen=True)
class AggregatorTopics:
    updates: str
    models: str
    lineage: str
    rejected: str


@dataclass
class AggregatorReport:
    versions: int = 0
    version: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    buffered: int = 0
    recoveries: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _tp(key: str, offset: int | None = None) -> TopicPartition:
    """``"topic:partition"`` (the checkpoint's offset keys) -> TopicPartition."""
    topic, part = key.rsplit(":", 1)
    return TopicPartition(topic, int(part)) if offset is None else TopicPartition(topic, int(part), offset)


class Aggregator:
    def __init__(
        self,
        model: ModelInfo,
        spec: AggregationSpec,
        fedbuff: FedBuff,
        kafka: KafkaSpec,
        topics: AggregatorTopics,
        verifier: UpdateVerifier,
        home: Path,
        secure: SecureBuffer | None = None,
        secagg_topic: str | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.fedbuff = fedbuff
        self.kafka = kafka
        self.topics = topics
        registry = registry_for(kafka)
        self.checks = UpdateChecks(model, spec, verifier, secure, registry)
        self.checkpoint = Checkpoint(home)
        self.local = LocalRegistry(home / "registry")
        self.version_codec = AvroCodec("model_version", registry)
        self.lineage_codec = AvroCodec("lineage", registry)
        self.group_id = aggregator_group(model.topology)
        self.run_id = uuid.uuid4().hex
        self.meta = VersionMeta(
            fedbuff.rule.name,
            spec.server_learning_rate,
            spec.server_optimizer,
            self.group_id,  # the transactional id: the same identity
            self.run_id,
        )
        self.cpu = CpuClock()
        self.stop_event = threading.Event()
        self.txn = TransactionalWriter(kafka, self.meta.producer_id, topics.rejected, self.stop_event)
        self.report = AggregatorReport()
        self._labels = {"topology": model.topology}
        M.start_aggregator(model.topology, model.name)
        self._consumer: Consumer | None = None
        self._cluster_checked = 0.0
        self.state = AggregatorState(0, model.initial_params.astype(np.float32))
        self._processed: dict[str, int] = {}
        self.secure = secure
        self.secagg_topic = secagg_topic
        self.secagg_codec = AvroCodec("secagg_message", registry)
        self._secagg_in: Consumer | None = None
        self._secagg_out: Producer | None = None

    def verify(self, value: bytes | None, topic: str = "", partition: int = 0, offset: int = 0) -> PendingUpdate:
        """Check one update against the current version; raises :class:`Rejected`. Needs no Kafka."""
        return self.checks.verify(value, self.state.version, topic, partition, offset)

    # -- start-up -------------------------------------------------------------------------------
    def _restore(self, cluster_id: str) -> None:
        assert self._consumer is not None
        state = self.checkpoint.resume(self._consumer, cluster_id, self.model.initial_params)
        if self.local.settle(state.version):
            log.info("local registry: version %d, committed before the last stop, added", state.version)
        self.state = state
        self.checks.last_seq = dict(state.last_sequence)
        self.checks.version_times = dict(state.version_times)
        self._processed = dict(state.offsets)
        M.AGG_VERSION.labels(**self._labels, model=self.model.name).set(state.version)
        self.report.version = state.version
        log.info("aggregator resumes at version %d (%d sequence spaces seen)", state.version, len(state.last_sequence))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            off = self.state.offsets.get(f"{tp.topic}:{tp.partition}")
            if off is not None:
                tp.offset = off
        consumer.assign(partitions)

    def _open(self) -> None:
        self._consumer = make_consumer(self.kafka, self.group_id)
        cluster_id = self._consumer.list_topics(timeout=30).cluster_id or ""
        # The producer first: init_transactions aborts a killed predecessor's open transaction.
        # Until then its offsets are pending in the group, and reading committed offsets (a stable
        # read, KIP-447) waits for the transaction timeout (60 s) instead of answering.
        self.txn.start()
        self._restore(cluster_id)
        self._announce()
        if self.secure is not None:
            assert self.secagg_topic is not None
            self.secure.reset(self.state.version)
            # Requests go out at once, outside the version transactions.
            self._secagg_out = make_producer(self.kafka)
            self._secagg_in = make_consumer(self.kafka, None)
            self._secagg_in.assign([TopicPartition(self.secagg_topic, 0, OFFSET_BEGINNING)])
        self._consumer.subscribe([self.topics.updates], on_assign=self._on_assign)

    def _version(self, version: int, parent: int, params: np.ndarray, used: list[PendingUpdate]) -> dict[str, Any]:
        return version_record(
            self.model,
            self.meta,
            version,
            parent,
            params,
            used,
            cost(self.model, used, self.cpu.read() if used else 0.0),
        )

    def _announce(self) -> None:
        """Make sure the models topic holds the current version (a fresh or compacted topic may not)."""
        latest = read_latest(self.kafka, self.topics.models, self.version_codec, key=self.model.name)
        if (
            latest is not None
            and latest["version"] == self.state.version
            and latest["params_sha256"] == self.state.params_sha256
        ):
            return
        record = self.local.get_version(self.state.version)
        if record is None or record["params_sha256"] != self.state.params_sha256:
            record = self._version(self.state.version, max(0, self.state.version - 1), self.state.params, [])
        self.txn.write_alone(self.topics.models, self.model.name.encode(), self.version_codec.encode(record))
        log.info("announced version %d on %s", self.state.version, self.topics.models)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, max_versions: int | None = None, timeout_s: float | None = None) -> AggregatorReport:
        self._open()
        assert self._consumer is not None
        M.ready(self._labels["topology"], "aggregator")
        t0 = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                    break
                if max_versions is not None and self.report.versions >= max_versions:
                    break
                # consume() waits its whole timeout unless 500 messages come: keep it short, an
                # update waits in it before its version (measured: benchmarks/freshness.py)
                for msg in self._consumer.consume(500, 0.05):
                    try:
                        self.handle(msg)
                    except KafkaException as exc:  # a produce into a failed transaction, or a fatal producer
                        self._recover(exc)
                        break
                    if max_versions is not None and self.report.versions >= max_versions:
                        break
                self._watch_cluster()
                if self.secure is not None:
                    self._secure_step()
                self._maybe_flush()
                self.report.buffered = self._buffered()
                M.AGG_BUFFER.labels(**self._labels).set(self.report.buffered)
        finally:
            self.report.seconds = time.monotonic() - t0
            self._close()
        return self.report

    def _buffered(self) -> int:
        return len(self.fedbuff.buffer) + (len(self.secure) if self.secure is not None else 0)

    def _close(self) -> None:
        if self.txn.open:
            if not self._buffered():
                self._commit(self._working_state(self.state.version, self.state.params, self.state.opt))
            else:
                # Buffered updates are not in a version yet: abort, so they are read again next time.
                self.txn.abort(30)
        if self._consumer is not None:
            self._consumer.close()
        self._consumer = None
        if self._secagg_in is not None:
            self._secagg_in.close()
            self._secagg_in = None
        if self._secagg_out is not None:
            self._secagg_out.flush(10)
            self._secagg_out = None

    def handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            raise_if_fatal(err, "aggregator")
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("aggregator consumer error: %s", err)
            return
        self._processed[f"{msg.topic()}:{msg.partition()}"] = int(msg.offset() or 0) + 1
        try:
            pending = self.verify(msg.value(), msg.topic() or "", int(msg.partition() or 0), int(msg.offset() or 0))
        except Rejected as rej:
            self._reject(msg, rej.reason, rej.detail)
            return
        self.report.accepted += 1
        M.AGG_ACCEPTED.labels(**self._labels).inc()
        M.AGG_STALENESS.labels(**self._labels).observe(pending.staleness)
        if self.secure is not None:
            self.secure.add(pending)
        elif self.fedbuff.add(pending):
            new, used, opt = self.fedbuff.aggregate(self.state.params, self.state.version, self.state.opt)
            self._publish_version(new, used, opt)

    def _secure_step(self) -> None:
        """Post (or re-post) the recovery request, read reveals, and make the version once unmasked."""
        assert self.secure is not None and self._secagg_in is not None and self._secagg_out is not None
        assert self.secagg_topic is not None
        if self.secure.due():
            request = self.secure.make_request()
            self._secagg_out.produce(
                self.secagg_topic, key=str(request["buffer"]).encode(), value=self.secagg_codec.encode(request)
            )
            self._secagg_out.poll(0)
        for msg in self._secagg_in.consume(200, 0):
            if msg.error() is not None:
                continue
            try:
                self.secure.add_reveal(self.secagg_codec.decode(msg.value()))
            except (SerializationError, KeyError) as exc:
                log.warning("unreadable secure-aggregation message at offset %d: %s", msg.offset(), exc)
        try:
            out = self.secure.unmask()
        except AggregationError as exc:
            log.warning("secure buffer %d cannot be unmasked yet: %s", self.secure.buffer, exc)
            return
        if out is not None:
            mean, used = out
            assert self.fedbuff.optimizer is not None
            new, opt = self.fedbuff.optimizer.step(self.state.params, mean.astype(np.float32), self.state.opt)
            self._publish_version(new, used, opt)

    def _reject(self, msg: Message, reason: str, detail: str) -> None:
        self.txn.ensure()
        assert self.txn.rejects is not None
        self.txn.rejects.send(msg, reason, detail)
        self.report.rejected += 1
        self.report.rejected_reasons[reason] = self.report.rejected_reasons.get(reason, 0) + 1
        M.AGG_REJECTED.labels(**self._labels, reason=reason).inc()

    # -- versions -------------------------------------------------------------------------------
    def _working_state(self, version: int, params: np.ndarray, opt: dict[str, np.ndarray]) -> AggregatorState:
        times = dict(self.state.version_times)
        if version != self.state.version:
            times[version] = int(time.time() * 1000)
            keep = max(1000, 2 * self.spec.max_staleness)
            times = {v: t for v, t in times.items() if v > version - keep}
        return AggregatorState(
            version, params, dict(self.checks.last_seq), dict(self._processed), self.state.cluster_id, dict(opt), times
        )

    def _publish_version(self, new_params: np.ndarray, used: list[PendingUpdate], opt: dict[str, np.ndarray]) -> None:
        version = self.state.version + 1
        record = self._version(version, self.state.version, new_params, used)
        lineage = lineage_record(record, used)
        key = self.model.name.encode()
        self.txn.produce(self.topics.models, key, self.version_codec.encode(record))
        self.txn.produce(self.topics.lineage, key, self.lineage_codec.encode(lineage))
        self.local.stage(record, lineage)
        if not self._commit(self._working_state(version, new_params, opt)):
            return
        if self.secure is not None:
            self.secure.reset(version)
        self.local.put(record, lineage)
        now = time.time()
        for u in used:
            M.UPDATE_TO_VERSION.labels(**self._labels).observe(max(0.0, now - u.created_ms / 1000))
        self.report.versions += 1
        self.report.version = version
        labels = {**self._labels, "model": self.model.name}
        M.AGG_VERSIONS.labels(**labels).inc()
        M.AGG_VERSION.labels(**labels).set(version)
        M.AGG_ENERGY.labels(**labels).inc(record["cost"]["energy_joules"])
        M.AGG_CO2E.labels(**labels).inc(record["cost"]["co2e_grams"])
        M.AGG_VERSION_ENERGY.labels(**labels).set(record["cost"]["energy_joules"])
        log.info(
            "version %d from %d updates (%s)", version, len(used), ", ".join(f"{u.stream}#{u.sequence}" for u in used)
        )

    def _maybe_flush(self) -> None:
        """Commit rejections and offsets now and then when no version is pending."""
        if (
            self.txn.open
            and not self._buffered()
            and time.monotonic() - self.txn.started >= self.spec.commit_interval_seconds
        ):
            self._commit(self._working_state(self.state.version, self.state.params, self.state.opt))

    def _commit(self, new: AggregatorState) -> bool:
        """Offsets + commit in the open transaction, bracketed by the checkpoint. False if rolled back."""
        assert self._consumer is not None
        self.checkpoint.write(self.state, new)
        try:
            self.txn.commit([_tp(k, v) for k, v in new.offsets.items()], self._consumer)
        except KafkaException as exc:
            self._recover(exc)
            return False
        self.checkpoint.write(new)
        self.state = new
        self.checks.version_times = dict(new.version_times)
        return True

    def _recover(self, exc: KafkaException) -> None:
        """Roll back to the last committed state and read again from its offsets."""
        log.warning("transaction failed (%s); rolling back to version %d", exc.args[0], self.state.version)
        self.report.recoveries += 1
        assert self._consumer is not None
        self.txn.rollback(exc)
        self._check_cluster()
        self.checkpoint.write(self.state)
        self.fedbuff.buffer.clear()
        if self.secure is not None:
            self.secure.reset(self.state.version)
        self.checks.last_seq = dict(self.state.last_sequence)
        self.checks.version_times = dict(self.state.version_times)
        self._processed = dict(self.state.offsets)
        for tp in self._consumer.assignment():
            off = self.state.offsets.get(f"{tp.topic}:{tp.partition}", OFFSET_BEGINNING)
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, off))

    def _watch_cluster(self, every_s: float = 5.0) -> None:
        """Notice a broker that came back as a new cluster even when no transaction failed on it (an
        idle aggregator would otherwise keep fetching at offsets that mean nothing there)."""
        now = time.monotonic()
        if now - self._cluster_checked < every_s:
            return
        self._cluster_checked = now
        cluster_id = self._cluster_id(timeout_s=2)  # None: the broker is away; librdkafka reconnects by itself
        if cluster_id and self.state.cluster_id and cluster_id != self.state.cluster_id:
            self._recover(KafkaException(KafkaError(KafkaError._STATE, f"the broker is now cluster {cluster_id}")))

    def _cluster_id(self, timeout_s: float) -> str | None:
        """The broker's cluster id, or None when it does not answer in time."""
        assert self._consumer is not None
        try:
            return self._consumer.list_topics(timeout=timeout_s).cluster_id or ""
        except KafkaException as exc:
            log.debug("cannot read the cluster id (%s)", exc.args[0])
            return None

    def _check_cluster(self) -> None:
        """A broker that came back without its data (the embedded one keeps nothing) is a new cluster:
        the old offsets mean nothing there. Keep version and sequences, read its topics from the start,
        and announce the current version on its empty models topic."""
        cluster_id = self._cluster_id(timeout_s=10)
        if cluster_id is None:
            log.warning("cannot read the cluster id after a rollback")
            return
        if not cluster_id or cluster_id == self.state.cluster_id:
            return
        log.warning(
            "the broker is now cluster %s (was %s): keeping version %d and sequences, reading updates from the start",
            cluster_id,
            self.state.cluster_id,
            self.state.version,
        )
        self.state.cluster_id = cluster_id
        self.state.offsets = {}
        self.checkpoint.write(self.state)
        try:
            self._announce()
        except KafkaException as exc:
            log.warning("cannot announce version %d on the new cluster yet (%s)", self.state.version, exc.args[0])
