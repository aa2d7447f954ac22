"""The site processor: consume -> validate -> features -> predict-then-learn -> trigger -> publish.

Raw records never leave this process. What leaves is a clipped, noised, accounted and signed
delta (see :class:`PrivatizedPublisher`), and dead letters of records that could not be used.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from river import drift
from river import metrics as rmetrics

from streamfed import metrics as M
from streamfed.errors import PrivacyBudgetExceeded, SerializationError
from streamfed.kafka.clients import make_consumer, make_producer
from streamfed.kafka.deadletters import DeadLetterSink
from streamfed.learners.model import SiteModel, initial_params
from streamfed.learners.torch_mlp import ReplayBuffer
from streamfed.privacy.accountant import PrivacyLedger, epsilon_for
from streamfed.privacy.mechanisms import add_gaussian_noise, clip_l2, clip_segments, csprng
from streamfed.privacy.signing import SiteSigner
from streamfed.serde.avro import AvroCodec
from streamfed.serde.tensors import params_from_bytes, params_to_bytes, sha256_hex
from streamfed.topology.spec import KafkaSpec, ModelSpec, PrivacySpec, UpdateSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteTopics:
    transactions: str
    updates: str
    models: str
    dead_letters: str


@dataclass
class SiteReport:
    """What a bounded run did (also written as the site's JSON summary)."""

    site: str
    records: int = 0
    labelled: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    updates_published: int = 0
    updates_withheld: int = 0
    epsilon: float = 0.0
    epsilon_per_record: float = 0.0
    budget_exhausted: bool = False
    auc: float | None = None
    global_auc: float | None = None
    logloss: float | None = None
    base_version: int = 0
    rebases: int = 0
    drifts: int = 0
    deep_steps: int = 0
    last_sequence: int = 0
    device: str = "cpu"
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class SiteState:
    """The site's durable state: the next update sequence number (a crash never reuses one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_sequence = 1
        if path.exists():
            self.next_sequence = int(json.loads(path.read_text())["next_sequence"])

    def advance(self) -> int:
        seq = self.next_sequence
        self.next_sequence += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next_sequence": self.next_sequence}))
        tmp.replace(self.path)
        return seq


class _Window:
    """Prequential metrics over a sliding window of labelled predictions."""

    def __init__(self, size: int) -> None:
        self.auc = rmetrics.RollingROCAUC(window_size=size)
        self.losses: list[float] = []
        self.size = size
        self.n = 0

    def update(self, y: np.ndarray, p: np.ndarray) -> None:
        eps = 1e-7
        for yi, pi in zip(y.tolist(), p.tolist(), strict=True):
            self.auc.update(yi == 1.0, pi)
            q = min(max(pi, eps), 1 - eps)
            self.losses.append(-math.log(q if yi == 1.0 else 1 - q))
            self.n += 1
        if len(self.losses) > self.size:
            del self.losses[: len(self.losses) - self.size]

    def get_auc(self) -> float | None:
        return float(self.auc.get()) if self.n >= 20 else None

    def get_logloss(self) -> float | None:
        return float(np.mean(self.losses)) if self.losses else None


class SiteProcessor:
    """One site's stream processor.

    Build it with :func:`streamfed.site.build_site` from a topology, then ``run`` it; runs are
    bounded by ``max_records``/``timeout_s`` or a stop event, and return a :class:`SiteReport`.
    """

    def __init__(
        self,
        topology: str,
        site_id: str,
        model_spec: ModelSpec,
        privacy: PrivacySpec,
        update: UpdateSpec,
        kafka: KafkaSpec,
        topics: SiteTopics,
        signer: SiteSigner,
        ledger: PrivacyLedger,
        state: SiteState,
        sigma: float,
        codec: AvroCodec,
        rng: np.random.Generator | None = None,
        batch_size: int = 2000,
    ) -> None:
        self.topology = topology
        self.site_id = site_id
        self.spec = model_spec
        self.privacy = privacy
        self.update = update
        self.kafka = kafka
        self.topics = topics
        self.signer = signer
        self.ledger = ledger
        self.state = state
        self.sigma = sigma
        self.codec = codec
        self.update_codec = AvroCodec("model_update", codec.registry)
        self.version_codec = AvroCodec("model_version", codec.registry)
        self.rng = rng if rng is not None else csprng()
        self.sample_rng = np.random.default_rng(self.rng.integers(1 << 62))
        self.batch_size = batch_size
        self.stop_event = threading.Event()

        self.model = SiteModel(model_spec)
        self.global_model = SiteModel(model_spec, device="cpu")
        self.base = initial_params(model_spec)
        self.base_version = 0
        self.base_sha = sha256_hex(params_to_bytes(self.base))
        self.model.set_params(self.base)
        self.global_model.set_params(self.base)
        self.replay = ReplayBuffer(self.model.featurizer.dim, model_spec.deep.replay_size)
        self.local_metrics = _Window(model_spec.auc_window)
        self.global_metrics = _Window(model_spec.auc_window)
        self.drift = drift.ADWIN()
        self.report = SiteReport(site=site_id, device=str(self.model.deep.device) if self.model.deep else "cpu")
        self.report.epsilon = ledger.spent
        self.report.last_sequence = state.next_sequence - 1
        self.report.epsilon_per_record = epsilon_for(
            sigma, min(len(ledger.releases), privacy.max_updates_per_record), privacy.delta
        )

        self._labels = {"topology": topology, "site": site_id}
        self._window_examples = 0
        self._window_first_ms: int | None = None
        self._last_publish = time.monotonic()
        self._since_step = 0
        self._last_step = time.monotonic()
        self._consumer: Consumer | None = None
        self._models: Consumer | None = None
        self._producer: Producer | None = None
        self._dead: DeadLetterSink | None = None
        M.SITE_EPSILON.labels(**self._labels).set(ledger.spent)
        M.SITE_EPSILON_RECORD.labels(**self._labels).set(self.report.epsilon_per_record)
        M.SITE_BUDGET_EXHAUSTED.labels(**self._labels).set(0)
        if ledger.remaining() is not None:
            M.SITE_BUDGET_REMAINING.labels(**self._labels).set(ledger.remaining() or 0.0)

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
            f"streamfed.{self.topology}.site.{self.site_id}",
            **{"statistics.interval.ms": 1000, "stats_cb": self._stats},
        )
        self._consumer.subscribe([self.topics.transactions])
        self._models = make_consumer(self.kafka, None)
        self._models.assign([TopicPartition(self.topics.models, 0, OFFSET_BEGINNING)])
        self._producer = make_producer(self.kafka)
        self._dead = DeadLetterSink(self._producer, self.topics.dead_letters, "site", self.site_id, self.codec.registry)

    def _close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
        for c in (self._consumer, self._models):
            if c is not None:
                c.close()
        self._consumer = self._models = None

    # -- the loop -------------------------------------------------------------------------------
    def run(self, max_records: int | None = None, timeout_s: float | None = None) -> SiteReport:
        """Process until stopped, ``max_records`` consumed, or ``timeout_s`` passed."""
        self._open()
        assert self._consumer is not None
        t0 = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                    break
                if max_records is not None and self.report.records + self.report.dead_letters >= max_records:
                    break
                # Never take more than one update window in a batch, so windows keep their size.
                msgs = self._consumer.consume(min(self.batch_size, self.update.every_records), 0.1)
                if msgs:
                    self.process(msgs)
                self._poll_models()
                self._maybe_step()
                self._maybe_publish()
                if self._producer is not None:
                    self._producer.poll(0)
        finally:
            self.report.seconds = time.monotonic() - t0
            self._close()
        return self.report

    def process(self, msgs: list[Message]) -> None:
        """Decode, validate and learn from one batch (predict each record before learning it)."""
        assert self._dead is not None
        records: list[dict[str, Any]] = []
        origin: list[Message] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("site=%s consumer error: %s", self.site_id, err)
                continue
            try:
                records.append(self.codec.decode(msg.value()))
                origin.append(msg)
            except SerializationError as exc:
                self._dead_letter(msg, "decode", str(exc))
        if not records:
            return
        X, y, status = self.model.featurizer.transform(records)
        good = np.fromiter((s is True for s in status), dtype=bool, count=len(status))
        for i in np.flatnonzero(~good):
            reason, _, detail = str(status[i]).partition(": ")
            self._dead_letter(origin[i], reason, detail)
        if not good.all():
            X, y = X[good], y[good]
            origin = [m for m, g in zip(origin, good, strict=True) if g]
        n = len(X)
        if n == 0:
            return
        self.report.records += n
        M.SITE_RECORDS.labels(**self._labels).inc(n)
        p_global = self.global_model.predict_proba_many(X)
        p_local = self.model.prequential_many(X, y)
        labelled = ~np.isnan(y)
        nl = int(labelled.sum())
        if nl:
            self.local_metrics.update(y[labelled], p_local[labelled])
            self.global_metrics.update(y[labelled], p_global[labelled])
            for err in np.abs(y[labelled] - p_local[labelled]).tolist():
                self.drift.update(err)
                if self.drift.drift_detected:
                    self.report.drifts += 1
                    M.SITE_DRIFT.labels(**self._labels).inc()
                    log.info("site=%s drift detected by ADWIN on the error stream", self.site_id)
            self.replay.add(X[labelled], y[labelled], window=self.state.next_sequence)
            self.report.labelled += nl
            self._window_examples += nl
            self._since_step += nl
            M.SITE_LABELLED.labels(**self._labels).inc(nl)
            first_ms = min(m.timestamp()[1] for m in origin)
            self._window_first_ms = first_ms if self._window_first_ms is None else min(first_ms, self._window_first_ms)
        self._export_quality()

    def _dead_letter(self, msg: Message, reason: str, detail: str) -> None:
        assert self._dead is not None
        self._dead.send(msg, reason, detail)
        self.report.dead_letters += 1
        self.report.dead_letter_reasons[reason] = self.report.dead_letter_reasons.get(reason, 0) + 1
        M.SITE_DEAD_LETTERS.labels(**self._labels, reason=reason).inc()

    def _export_quality(self) -> None:
        for name, win in (("local", self.local_metrics), ("global", self.global_metrics)):
            auc, ll = win.get_auc(), win.get_logloss()
            if auc is not None:
                M.SITE_AUC.labels(**self._labels, model=name).set(auc)
            if ll is not None:
                M.SITE_LOGLOSS.labels(**self._labels, model=name).set(ll)
        self.report.auc = self.local_metrics.get_auc()
        self.report.global_auc = self.global_metrics.get_auc()
        self.report.logloss = self.local_metrics.get_logloss()

    def _maybe_step(self) -> None:
        deep = self.model.deep
        if deep is None or len(self.replay) == 0 or self._since_step == 0:
            return
        d = self.spec.deep
        if self._since_step < d.step_every_records and time.monotonic() - self._last_step < d.step_every_seconds:
            return
        deep.train_steps(self.replay, d.steps, d.batch_size, self.sample_rng)
        M.GPU_STEP.labels(**self._labels, device=deep.device.type).observe(deep.last_step_seconds)
        self.report.deep_steps += d.steps
        self._since_step = 0
        self._last_step = time.monotonic()

    # -- publishing -----------------------------------------------------------------------------
    def _maybe_publish(self) -> None:
        u = self.update
        due = self._window_examples >= u.every_records or (
            time.monotonic() - self._last_publish >= u.every_seconds and self._window_examples >= u.min_records
        )
        if due:
            self.publish()

    def publish(self) -> bool:
        """Clip, noise, account, sign and produce the delta of the current window.

        Order matters for the guarantee: the ledger and the sequence number are made durable and
        the consumed offsets committed *before* the update is produced, so a crash can lose an
        update but never release a record more than ``k`` times or reuse a sequence number.
        """
        assert self._producer is not None and self._consumer is not None
        C = self.privacy.clip_norm
        delta = self.model.get_params() - self.base
        try:
            eps_after = self.ledger.check(self.sigma)
        except PrivacyBudgetExceeded as exc:
            if not self.report.budget_exhausted:
                log.warning("site=%s stops publishing: %s (keeps learning locally)", self.site_id, exc)
            self.report.budget_exhausted = True
            self.report.updates_withheld += 1
            M.SITE_BUDGET_EXHAUSTED.labels(**self._labels).set(1)
            self._reset_window()
            return False
        share = self.privacy.online_clip_share
        if share is not None and self.model.deep is not None:
            n_online = len(self.model.featurizer.names) + 1
            bounds = [(0, n_online, C * math.sqrt(share)), (n_online, delta.size, C * math.sqrt(1 - share))]
            clipped, norm = clip_segments(delta, bounds)
        else:
            clipped, norm = clip_l2(delta, C)
        M.SITE_UPDATE_NORM.labels(**self._labels).observe(norm)
        noised = add_gaussian_noise(clipped, self.sigma * C, self.rng)
        seq = self.state.advance()
        spent = self.ledger.record(seq, self.sigma, C, self._window_examples)
        assert abs(spent - eps_after) < 1e-9
        try:
            self._consumer.commit(asynchronous=False)
        except Exception as exc:
            log.debug("site=%s offset commit before publish: %s", self.site_id, exc)
        blob = params_to_bytes(noised)
        now_ms = int(time.time() * 1000)
        record: dict[str, Any] = {
            "topology": self.topology,
            "model": self.spec.name,
            "site_id": self.site_id,
            "sequence": seq,
            "base_version": self.base_version,
            "created_ms": now_ms,
            "num_examples": self._window_examples,
            "num_params": int(noised.size),
            "params": blob,
            "clip_norm": C,
            "noise_std": self.sigma * C,
            "epsilon_spent": spent,
            "delta": self.privacy.delta,
            "first_event_ms": self._window_first_ms or now_ms,
        }
        self.signer.sign(record)
        self._producer.produce(self.topics.updates, key=self.site_id.encode(), value=self.update_codec.encode(record))
        self._producer.poll(0)
        log.info(
            "site=%s published update seq=%d base=%d examples=%d norm=%.3f eps=%.3f",
            self.site_id,
            seq,
            self.base_version,
            self._window_examples,
            norm,
            spent,
        )
        self.report.updates_published += 1
        self.report.last_sequence = seq
        self.report.epsilon = spent
        self.report.epsilon_per_record = epsilon_for(
            self.sigma, min(len(self.ledger.releases), self.privacy.max_updates_per_record), self.privacy.delta
        )
        M.SITE_UPDATES.labels(**self._labels).inc()
        M.SITE_EPSILON.labels(**self._labels).set(spent)
        M.SITE_EPSILON_RECORD.labels(**self._labels).set(self.report.epsilon_per_record)
        if self.ledger.remaining() is not None:
            M.SITE_BUDGET_REMAINING.labels(**self._labels).set(self.ledger.remaining() or 0.0)
        # After a release the local model restarts from the global base: whatever it learnt left
        # only through the noised update. Rows stay in the replay buffer for at most k releases.
        self.model.set_params(self.base)
        if self.model.deep is not None:
            self.model.deep.reset_optimizer()
        self.replay.evict_windows_before(seq - self.privacy.max_updates_per_record + 2)
        self._reset_window()
        return True

    def _reset_window(self) -> None:
        self._window_examples = 0
        self._window_first_ms = None
        self._last_publish = time.monotonic()

    # -- global versions ------------------------------------------------------------------------
    def _poll_models(self) -> None:
        assert self._models is not None
        for msg in self._models.consume(100, 0):
            if msg.error() is not None:
                continue
            try:
                rec = self.version_codec.decode(msg.value())
                if rec["model"] != self.spec.name:
                    continue
                version = int(rec["version"])
                sha = rec["params_sha256"]
                # A repeated version number with other content replaces the earlier one (an aborted
                # transaction stays visible on brokers without read_committed filtering).
                if version > self.base_version or (version == self.base_version and sha != self.base_sha):
                    self.rebase(version, params_from_bytes(rec["params"], self.model.num_params), sha)
            except (SerializationError, KeyError) as exc:
                log.warning(
                    "site=%s ignores an unreadable model version at offset %d: %s", self.site_id, msg.offset(), exc
                )

    def rebase(self, version: int, params: np.ndarray, sha: str) -> None:
        """Move onto a new global version, keeping the progress of the window not yet published."""
        progress = self.model.get_params() - self.base
        self.base = params.astype(np.float32)
        self.base_version = version
        self.base_sha = sha
        self.model.set_params(self.base + progress)
        self.global_model.set_params(self.base)
        self.report.base_version = version
        self.report.rebases += 1
        M.SITE_BASE_VERSION.labels(**self._labels).set(version)
        log.debug("site=%s rebased on version %d", self.site_id, version)
