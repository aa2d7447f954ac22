"""The Aggregator service: verified updates in, model versions out, exactly once.

Updates are read ``read_committed``; each is verified (signature, sequence, model, shape, finite
values, norm, staleness) or sent to the rejected topic with its reason. Every ``buffer_size``
accepted updates FedBuff makes a version; the version, its lineage record and the consumed
offsets go in one Kafka transaction, bracketed by the local checkpoint (see ``checkpoint.py``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streamfed import metrics as M
from streamfed.aggregation.checkpoint import AggregatorState, Checkpoint
from streamfed.aggregation.fedbuff import FedBuff, PendingUpdate
from streamfed.aggregation.secure import SecureBuffer
from streamfed.energy import CpuClock, estimate
from streamfed.errors import AggregationError, SerializationError, SignatureError
from streamfed.kafka.clients import make_consumer, make_producer
from streamfed.kafka.deadletters import DeadLetterSink
from streamfed.learners.base import Segment
from streamfed.privacy.mechanisms import l2_norm
from streamfed.privacy.signing import UpdateVerifier
from streamfed.registry.local import LocalRegistry
from streamfed.registry.reader import read_latest
from streamfed.serde.avro import AvroCodec
from streamfed.serde.tensors import params_from_bytes, params_to_bytes, sha256_hex
from streamfed.topology.spec import AggregationSpec, EnergySpec, KafkaSpec

log = logging.getLogger(__name__)

# A transaction step that has not finished in this time is rolled back and redone (each takes
# milliseconds on a healthy broker); a longer wait would only stall versions while updates pile up.
TXN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class AggregatorTopics:
    updates: str
    models: str
    lineage: str
    rejected: str


@dataclass(frozen=True)
class ModelInfo:
    """What the aggregator must know of the model: its name, shape and initial parameters."""

    topology: str
    name: str
    layout: list[Segment]
    feature_order: list[str]
    schema_fingerprint: str
    initial_params: np.ndarray
    delta: float
    max_update_norm: float
    energy: EnergySpec = field(default_factory=EnergySpec)


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


def _pending(
    upd: dict[str, Any], delta: np.ndarray, topic: str, partition: int, offset: int, **extra: Any
) -> PendingUpdate:
    """A verified update record as the buffer keeps it."""
    return PendingUpdate(
        site_id=upd["site_id"],
        sequence=int(upd["sequence"]),
        base_version=int(upd["base_version"]),
        num_examples=int(upd["num_examples"]),
        delta=delta,
        topic=topic,
        partition=partition,
        offset=offset,
        created_ms=int(upd["created_ms"]),
        first_event_ms=int(upd["first_event_ms"]),
        epsilon_spent=float(upd["epsilon_spent"]),
        noise_std=float(upd["noise_std"]),
        clip_norm=float(upd["clip_norm"]),
        cpu_seconds=float(upd["cpu_seconds"]),
        gpu_seconds=float(upd["gpu_seconds"]),
        gpu_energy_joules=None if upd["gpu_energy_joules"] is None else float(upd["gpu_energy_joules"]),
        **extra,
    )


def _bounded(call: Callable[[], None], timeout_s: float) -> None:
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


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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
        self.verifier = verifier
        self.checkpoint = Checkpoint(home)
        self.local = LocalRegistry(home / "registry")
        self.update_codec = AvroCodec("model_update")
        self.version_codec = AvroCodec("model_version")
        self.lineage_codec = AvroCodec("lineage")
        self.group_id = f"streamfed.{model.topology}.aggregator"
        self.transactional_id = f"streamfed.{model.topology}.aggregator"
        self.run_id = uuid.uuid4().hex
        self.cpu = CpuClock()
        self.stop_event = threading.Event()
        self.report = AggregatorReport()
        self._labels = {"topology": model.topology}
        M.start_aggregator(model.topology, model.name)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._rejects: DeadLetterSink | None = None
        self._txn_open = False
        self._txn_started = 0.0
        self._cluster_checked = 0.0
        self.state = AggregatorState(0, model.initial_params.astype(np.float32))
        self._last_seq: dict[str, int] = {}
        self._processed: dict[str, int] = {}
        self.secure = secure
        self.secagg_topic = secagg_topic
        self.secagg_codec = AvroCodec("secagg_message")
        self._secagg_in: Consumer | None = None
        self._secagg_out: Producer | None = None

    # -- start-up -------------------------------------------------------------------------------
    def _restore(self, cluster_id: str) -> None:
        loaded = self.checkpoint.load()
        if loaded is None:
            state = AggregatorState(0, self.model.initial_params.astype(np.float32), cluster_id=cluster_id)
        else:
            committed, pending = loaded
            state = committed
            if pending is not None and pending.offsets:
                assert self._consumer is not None
                tps = [_tp(k) for k in pending.offsets]
                on_broker = {f"{tp.topic}:{tp.partition}": tp.offset for tp in self._consumer.committed(tps, 30)}
                if all(on_broker.get(k) == v for k, v in pending.offsets.items()):
                    state = pending
                    log.info("checkpoint: the pending transaction for version %d had committed", pending.version)
                else:
                    log.info(
                        "checkpoint: the pending transaction for version %d had not committed; resuming at %d",
                        pending.version,
                        committed.version,
                    )
            if state.cluster_id and state.cluster_id != cluster_id:
                log.warning(
                    "checkpoint is from cluster %s, broker is %s: keeping version %d and sequences, "
                    "reading updates from the group's offsets",
                    state.cluster_id,
                    cluster_id,
                    state.version,
                )
                state.offsets = {}
            state.cluster_id = cluster_id
        if state.params.shape != self.model.initial_params.shape:
            raise AggregationError(
                f"checkpoint in {self.checkpoint.folder} holds {state.params.size} parameters but the model has "
                f"{self.model.initial_params.size}: a changed topology needs a new state_dir"
            )
        self.checkpoint.write(state)
        self.state = state
        self._last_seq = dict(state.last_sequence)
        self._processed = dict(state.offsets)
        M.AGG_VERSION.labels(**self._labels, model=self.model.name).set(state.version)
        self.report.version = state.version
        log.info("aggregator resumes at version %d (%d sites seen)", state.version, len(state.last_sequence))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            off = self.state.offsets.get(f"{tp.topic}:{tp.partition}")
            if off is not None:
                tp.offset = off
        consumer.assign(partitions)

    def _new_producer(self) -> Producer:
        prod = make_producer(self.kafka, **{"transactional.id": self.transactional_id})
        prod.init_transactions(60)
        return prod

    def _open(self) -> None:
        self._consumer = make_consumer(self.kafka, self.group_id)
        cluster_id = self._consumer.list_topics(timeout=30).cluster_id or ""
        self._restore(cluster_id)
        self._producer = self._new_producer()
        self._rejects = DeadLetterSink(self._producer, self.topics.rejected, "aggregator", None)
        self._announce()
        if self.secure is not None:
            assert self.secagg_topic is not None
            self.secure.reset(self.state.version)
            # Requests go out at once, outside the version transactions.
            self._secagg_out = make_producer(self.kafka)
            self._secagg_in = make_consumer(self.kafka, None)
            self._secagg_in.assign([TopicPartition(self.secagg_topic, 0, OFFSET_BEGINNING)])
        self._consumer.subscribe([self.topics.updates], on_assign=self._on_assign)

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
            record = self._version_record(self.state.version, max(0, self.state.version - 1), self.state.params, [])
        assert self._producer is not None
        self._producer.begin_transaction()
        self._producer.produce(
            self.topics.models, key=self.model.name.encode(), value=self.version_codec.encode(record)
        )
        self._producer.commit_transaction(60)
        log.info("announced version %d on %s", self.state.version, self.topics.models)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, max_versions: int | None = None, timeout_s: float | None = None) -> AggregatorReport:
        self._open()
        assert self._consumer is not None
        t0 = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                    break
                if max_versions is not None and self.report.versions >= max_versions:
                    break
                for msg in self._consumer.consume(500, 0.2):
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
        if self._producer is not None and self._txn_open:
            if not self._buffered():
                self._commit(self._working_state(self.state.version, self.state.params))
            else:
                # Buffered updates are not in a version yet: abort, so they are read again next time.
                self._producer.abort_transaction(30)
                self._txn_open = False
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
            self._make_version()

    def verify(self, value: bytes | None, topic: str = "", partition: int = 0, offset: int = 0) -> PendingUpdate:
        """Check one update; raises :class:`Rejected` with a reason code. Needs no Kafka."""
        try:
            upd = self.update_codec.decode(value)
        except SerializationError as exc:
            raise Rejected("decode", str(exc)) from exc
        try:
            self.verifier.verify(upd)
        except SignatureError as exc:
            text = str(exc)
            reason = (
                "unknown_site"
                if text.startswith("unknown site")
                else ("unknown_key" if "not registered" in text else "signature")
            )
            raise Rejected(reason, text) from exc
        site, seq = upd["site_id"], int(upd["sequence"])
        last = self._last_seq.get(site, 0)
        if seq <= last:
            raise Rejected("replay", f"{site}#{seq} is not after the last sequence seen, {last}")
        self._last_seq[site] = seq
        if upd["model"] != self.model.name or upd["topology"] != self.model.topology:
            raise Rejected(
                "wrong_model",
                f"update for {upd['topology']}/{upd['model']}, "
                f"this aggregator serves {self.model.topology}/{self.model.name}",
            )
        n = self.model.initial_params.size
        try:
            delta = params_from_bytes(upd["params"], n)
        except SerializationError as exc:
            raise Rejected("shape", str(exc)) from exc
        if int(upd["num_params"]) != n:
            raise Rejected("shape", f"num_params {upd['num_params']} != {n}")
        if self.secure is not None:
            return self._secure_pending(upd, delta, topic, partition, offset)
        if upd.get("secure_buffer") is not None:
            raise Rejected("secure", "a masked update: this topology does not aggregate securely")
        if not np.isfinite(delta).all():
            raise Rejected("not_finite", f"{int((~np.isfinite(delta)).sum())} non-finite parameters")
        norm = l2_norm(delta)
        if norm > self.model.max_update_norm:
            raise Rejected("norm", f"L2 norm {norm:.4g} > {self.model.max_update_norm:.4g}")
        base = int(upd["base_version"])
        if base > self.state.version:
            raise Rejected("future_base", f"base version {base} is ahead of the current {self.state.version}")
        staleness = self.state.version - base
        if staleness > self.spec.max_staleness:
            raise Rejected("stale", f"staleness {staleness} > max_staleness {self.spec.max_staleness}")
        if int(upd["num_examples"]) < 0 or not math.isfinite(float(upd["noise_std"])):
            raise Rejected("metadata", "negative example count or non-finite noise std")
        return _pending(upd, delta, topic, partition, offset, staleness=staleness)

    def _secure_pending(
        self, upd: dict[str, Any], blob: np.ndarray, topic: str, partition: int, offset: int
    ) -> PendingUpdate:
        """A masked update: its values are uint32 (finite-value and norm checks are meaningless on them)."""
        assert self.secure is not None
        problem = self.secure.check(upd, self.state.version)
        if problem is not None:
            raise Rejected(*problem)
        if int(upd["num_examples"]) < 0:
            raise Rejected("metadata", "negative example count")
        return _pending(upd, blob.view(np.uint32), topic, partition, offset, shares=dict(upd["self_mask_shares"]))

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
            new = self.state.params.astype(np.float64) + self.spec.server_learning_rate * mean
            self._publish_version(new.astype(np.float32), used)

    def _ensure_txn(self) -> None:
        if not self._txn_open:
            assert self._producer is not None
            try:
                self._producer.begin_transaction()
            except KafkaException as exc:  # the producer is in a fatal or abortable state
                log.warning("cannot begin a transaction (%s); recreating the transactional producer", exc.args[0])
                self._replace_producer()
                self._producer.begin_transaction()
            self._txn_open = True
            self._txn_started = time.monotonic()

    def _reject(self, msg: Message, reason: str, detail: str) -> None:
        assert self._rejects is not None
        self._ensure_txn()
        self._rejects.send(msg, reason, detail)
        self.report.rejected += 1
        self.report.rejected_reasons[reason] = self.report.rejected_reasons.get(reason, 0) + 1
        M.AGG_REJECTED.labels(**self._labels, reason=reason).inc()

    # -- versions -------------------------------------------------------------------------------
    def _version_record(
        self, version: int, parent: int, params: np.ndarray, used: list[PendingUpdate]
    ) -> dict[str, Any]:
        blob = params_to_bytes(params)
        return {
            "model": self.model.name,
            "topology": self.model.topology,
            "version": version,
            "parent_version": parent,
            "created_ms": int(time.time() * 1000),
            "dtype": "float32",
            "params": blob,
            "params_sha256": sha256_hex(blob),
            "layout": [{"name": s.name, "shape": list(s.shape)} for s in self.model.layout],
            "feature_order": list(self.model.feature_order),
            "schema_fingerprint": self.model.schema_fingerprint,
            "contributions": [
                {
                    "site_id": u.site_id,
                    "sequence": u.sequence,
                    "base_version": u.base_version,
                    "num_examples": u.num_examples,
                    "staleness": u.staleness,
                    "weight": u.weight,
                    "epsilon_spent": u.epsilon_spent,
                    "noise_std": u.noise_std,
                    "clip_norm": u.clip_norm,
                }
                for u in used
            ],
            "cost": self._cost(used),
            "rule": self.fedbuff.rule.name,
            "server_learning_rate": self.spec.server_learning_rate,
            "delta": self.model.delta,
            "quality": {},
            "producer_id": self.transactional_id,
            "run_id": self.run_id,
        }

    def _cost(self, used: list[PendingUpdate]) -> dict[str, Any]:
        """What the version cost: the sites' CPU/GPU time reported with its updates, this
        aggregator's CPU time since the previous version, and the energy and CO2e estimate."""
        site_cpu = sum(u.cpu_seconds for u in used)
        site_gpu = sum(u.gpu_seconds for u in used)
        agg_cpu = self.cpu.read() if used else 0.0
        measured = [u.gpu_energy_joules for u in used if u.gpu_energy_joules is not None]
        gpu_j = sum(measured) if measured else None
        unmeasured_gpu = sum(u.gpu_seconds for u in used if u.gpu_energy_joules is None)
        joules, co2e = estimate(self.model.energy, site_cpu + agg_cpu, unmeasured_gpu, gpu_j or 0.0)
        return {
            "site_cpu_seconds": site_cpu,
            "site_gpu_seconds": site_gpu,
            "aggregator_cpu_seconds": agg_cpu,
            "gpu_energy_joules_measured": gpu_j,
            "energy_joules": joules,
            "co2e_grams": co2e,
        }

    def _lineage_record(self, record: dict[str, Any], used: list[PendingUpdate]) -> dict[str, Any]:
        return {
            "model": record["model"],
            "version": record["version"],
            "parent_version": record["parent_version"],
            "created_ms": record["created_ms"],
            "params_sha256": record["params_sha256"],
            "updates": [
                {
                    "site_id": u.site_id,
                    "sequence": u.sequence,
                    "base_version": u.base_version,
                    "num_examples": u.num_examples,
                    "staleness": u.staleness,
                    "weight": u.weight,
                    "topic": u.topic,
                    "partition": u.partition,
                    "offset": u.offset,
                    "published_ms": u.created_ms,
                    "first_event_ms": u.first_event_ms,
                }
                for u in used
            ],
            "cost": record["cost"],
            "producer_id": record["producer_id"],
            "run_id": record["run_id"],
        }

    def _working_state(self, version: int, params: np.ndarray) -> AggregatorState:
        return AggregatorState(version, params, dict(self._last_seq), dict(self._processed), self.state.cluster_id)

    def _make_version(self) -> None:
        new_params, used = self.fedbuff.aggregate(self.state.params, self.state.version)
        self._publish_version(new_params, used)

    def _publish_version(self, new_params: np.ndarray, used: list[PendingUpdate]) -> None:
        assert self._producer is not None
        version = self.state.version + 1
        record = self._version_record(version, self.state.version, new_params, used)
        lineage = self._lineage_record(record, used)
        self._ensure_txn()
        key = self.model.name.encode()
        self._producer.produce(self.topics.models, key=key, value=self.version_codec.encode(record))
        self._producer.produce(self.topics.lineage, key=key, value=self.lineage_codec.encode(lineage))
        if self._commit(self._working_state(version, new_params)):
            if self.secure is not None:
                self.secure.reset(version)
            self.local.put(record, lineage)
            now = time.time()
            for u in used:
                M.UPDATE_TO_VERSION.labels(**self._labels).observe(max(0.0, now - u.created_ms / 1000))
            self.report.versions += 1
            self.report.version = version
            M.AGG_VERSIONS.labels(**self._labels, model=self.model.name).inc()
            M.AGG_VERSION.labels(**self._labels, model=self.model.name).set(version)
            cost = record["cost"]
            M.AGG_ENERGY.labels(**self._labels, model=self.model.name).inc(cost["energy_joules"])
            M.AGG_CO2E.labels(**self._labels, model=self.model.name).inc(cost["co2e_grams"])
            M.AGG_VERSION_ENERGY.labels(**self._labels, model=self.model.name).set(cost["energy_joules"])
            log.info(
                "version %d from %d updates (%s)",
                version,
                len(used),
                ", ".join(f"{u.site_id}#{u.sequence}" for u in used),
            )

    def _maybe_flush(self) -> None:
        """Commit rejections and offsets now and then when no version is pending."""
        if (
            self._txn_open
            and not self._buffered()
            and time.monotonic() - self._txn_started >= self.spec.commit_interval_seconds
        ):
            self._commit(self._working_state(self.state.version, self.state.params))

    def _commit(self, new: AggregatorState) -> bool:
        """Offsets + commit in the open transaction, bracketed by the checkpoint. False if rolled back."""
        assert self._producer is not None and self._consumer is not None
        self.checkpoint.write(self.state, new)
        offsets = [_tp(k, v) for k, v in new.offsets.items()]
        try:
            self._ensure_txn()
            if offsets:
                meta = self._consumer.consumer_group_metadata()
                producer = self._producer
                _bounded(lambda: producer.send_offsets_to_transaction(offsets, meta, TXN_TIMEOUT_S), TXN_TIMEOUT_S)
            self._producer.commit_transaction(TXN_TIMEOUT_S)
        except KafkaException as exc:
            self._recover(exc)
            return False
        self._txn_open = False
        self.checkpoint.write(new)
        self.state = new
        return True

    def _recover(self, exc: KafkaException) -> None:
        """Roll back to the last committed state and read again from its offsets."""
        err = exc.args[0]
        log.warning("transaction failed (%s); rolling back to version %d", err, self.state.version)
        self.report.recoveries += 1
        assert self._producer is not None and self._consumer is not None
        if isinstance(err, KafkaError) and err.fatal():
            self._replace_producer()
        else:
            try:
                # Bounded: a producer that cannot abort in 15 s is replaced (re-init fences the old
                # transaction), rather than stalling the aggregator while updates pile up.
                self._producer.abort_transaction(15)
            except KafkaException as abort_exc:
                log.warning("abort failed (%s); recreating the transactional producer", abort_exc)
                self._replace_producer()
        self._txn_open = False
        self._check_cluster()
        self.checkpoint.write(self.state)
        self.fedbuff.buffer.clear()
        if self.secure is not None:
            self.secure.reset(self.state.version)
        self._last_seq = dict(self.state.last_sequence)
        self._processed = dict(self.state.offsets)
        for tp in self._consumer.assignment():
            off = self.state.offsets.get(f"{tp.topic}:{tp.partition}", OFFSET_BEGINNING)
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, off))

    def _replace_producer(self) -> None:
        """A new transactional producer (fencing the old one); retried until the broker answers."""
        while True:
            try:
                self._producer = self._new_producer()
                break
            except KafkaException as exc:
                log.warning("cannot initialise the transactional producer (%s); retrying", exc.args[0])
                if self.stop_event.wait(1.0):
                    raise
        self._rejects = DeadLetterSink(self._producer, self.topics.rejected, "aggregator", None)

    def _watch_cluster(self, every_s: float = 5.0) -> None:
        """Notice a broker that came back as a new cluster even when no transaction failed on it (an
        idle aggregator would otherwise keep fetching at offsets that mean nothing there)."""
        assert self._consumer is not None
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
