"""A site's learning and privacy logic with no Kafka in it.

:class:`SiteLearner` feeds each batch of featurised records, in prequential order, to the three
parts of a site, each in its own module:

* the **personal model** (:mod:`streamfed.site.personal`): learns every labelled record, never
  leaves the site, never reset;
* the **federated contribution** (:mod:`streamfed.site.contribution`): clipped per-record
  gradients at the site's global point, noised sums per window, the only thing that crosses;
* the **served blend** (:mod:`streamfed.site.served`): personal and global mixed by weights learnt
  online from prequential log loss.

It scores every row with the personal, the global and the served model before anything learns it,
keeps the three prequential AUCs, and turns a window into a signed, accounted update record. The
:class:`~streamfed.site.processor.SiteProcessor` feeds it from Kafka; tests and benchmarks feed it
directly.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import dp_accounting
import numpy as np
from river import drift

from streamfed import metrics as M
from streamfed.energy import CpuClock, GpuEnergyMeter
from streamfed.errors import PrivacyBudgetExceeded
from streamfed.learners.features import Featurizer
from streamfed.learners.federated import build_federated_model, sigmoid
from streamfed.privacy.accountant import Mechanism, PrivacyLedger, Release, epsilon
from streamfed.privacy.signing import SiteSigner, sequence_space
from streamfed.serde.avro import AvroCodec
from streamfed.serde.tensors import params_from_bytes, params_to_bytes, sha256_hex
from streamfed.site.contribution import FederatedContribution
from streamfed.site.guard import RecordGuard
from streamfed.site.personal import PersonalModel
from streamfed.site.served import Blend, RollingAUC
from streamfed.topology.spec import ModelSpec, PrivacySpec, UpdateSpec

log = logging.getLogger(__name__)


class Scores(NamedTuple):
    """Each row's prequential P(y = 1) by the served blend, the personal model and the global version."""

    served: np.ndarray
    personal: np.ndarray
    global_: np.ndarray


@dataclass
class SiteReport:
    """What a run did (also written as the site's JSON summary)."""

    site: str
    records: int = 0
    labelled: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    dead_letters_undelivered: int = 0  # dead letters the broker had not acknowledged at shutdown
    updates_published: int = 0
    updates_withheld: int = 0
    updates_pending: int = 0  # made but not yet delivered to the broker
    updates_dropped: int = 0  # undelivered and dropped: more than the kept maximum
    producer_recreations: int = 0
    epsilon: float = 0.0
    epsilon_per_record: float = 0.0
    budget_exhausted: bool = False
    auc: float | None = None  # served (personal and global blended)
    local_auc: float | None = None  # personal model
    global_auc: float | None = None  # global version
    logloss: float | None = None  # served
    served_weight: float | None = None  # weight of the personal model in the served blend
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
    """The site's next update sequence number: one after the last release in its privacy ledger.

    The ledger is written and fsynced before an update is produced, so every sequence number that
    ever reached the broker is in it, and a restart never reuses one (a number drawn and then lost
    in a crash before its ledger line was never produced). ``path`` (``state.json``) is the file
    earlier versions kept the number in, still read: the larger of the two wins; it is no longer
    written, which saved two file writes and a rename per update (2 ms each on this machine's disk).
    """

    def __init__(self, path: Path | None, last_released: int = 0) -> None:
        self.path = path
        self.next_sequence = last_released + 1
        if path is not None and path.exists():
            self.next_sequence = max(self.next_sequence, int(json.loads(path.read_text())["next_sequence"]))

    def advance(self) -> int:
        seq = self.next_sequence
        self.next_sequence += 1
        return seq


@functools.lru_cache(maxsize=64)
def _record_epsilon(mech: Mechanism, releases: int, delta: float) -> float:
    """A record's epsilon after ``releases`` of the mechanism (the tighter of RDP and PLD)."""
    if releases <= 0:
        return 0.0
    event = dp_accounting.SelfComposedDpEvent(mech.release_event(), releases)
    return min(epsilon(event, delta, "rdp"), epsilon(event, delta, "pld"))


class SiteLearner:
    """Prequential scoring of personal, global and served; private updates of each window."""

    def __init__(
        self,
        topology: str,
        site_id: str,
        model_spec: ModelSpec,
        privacy: PrivacySpec,
        update: UpdateSpec,
        signer: SiteSigner,
        ledger: PrivacyLedger,
        state: SiteState,
        mechanism: Mechanism,
        rng: np.random.Generator | None = None,
        clock: Callable[[], float] = time.monotonic,
        device: str | None = None,
        noise_divisor: float = 1.0,
        contribute: bool = True,
        background_deep: bool = False,
        worker: str = "",
    ) -> None:
        from streamfed.privacy.mechanisms import csprng

        self.topology = topology
        self.site_id = site_id
        self.worker = worker  # one of several processes of the site: its own sequence space and ledger
        self.spec = model_spec
        self.privacy = privacy
        self.update = update
        self.signer = signer
        self.ledger = ledger
        self.state = state
        self.mechanism = mechanism
        self.rng = rng if rng is not None else csprng()
        self.clock = clock
        self.contribute = contribute  # False: learn and serve only (benchmark arms that never publish)

        self.featurizer = Featurizer(model_spec.features, model_spec.label)
        self.guard = RecordGuard(site_id, model_spec.site_field, model_spec.id_field, model_spec.dedup_window)
        dev = device or model_spec.deep.device
        self.personal = PersonalModel(
            model_spec,
            self.featurizer.names,
            np.random.default_rng(self.rng.integers(1 << 62)),
            clock,
            dev,
            background=background_deep,  # a live site: learn at once, torch arrives when it is loaded
        )
        self.federated = build_federated_model(model_spec, dev)
        self.base = self.federated.initial_params()
        self.base_version = 0
        self.base_sha = sha256_hex(params_to_bytes(self.base))
        self.contribution = FederatedContribution(
            self.federated, mechanism, update.every_records, update.learning_rate, self.rng, noise_divisor
        )
        self.served = Blend(model_spec.blend)
        self.local_metrics = RollingAUC(model_spec.auc_window)
        self.global_metrics = RollingAUC(model_spec.auc_window)
        self.served_metrics = RollingAUC(model_spec.auc_window)
        self.drift = drift.ADWIN()
        self.report = SiteReport(site=site_id, device=self.federated.device)
        self.report.epsilon = ledger.spent
        self.report.last_sequence = state.next_sequence - 1
        self.report.epsilon_per_record = self._epsilon_per_record()

        self.labels = {"topology": topology, "site": site_id}
        M.start_site(topology, site_id)
        self.window_first_ms: int | None = None
        self._last_publish = clock()
        self._exported_at = clock()
        self._labelled_since_export = 0
        self.cpu = CpuClock()
        self.gpu_energy = GpuEnergyMeter() if self.federated.device == "cuda" else None
        self._gpu_seconds = 0.0
        M.SITE_EPSILON.labels(**self.labels).set(ledger.spent)
        M.SITE_EPSILON_RECORD.labels(**self.labels).set(self.report.epsilon_per_record)
        M.SITE_BUDGET_EXHAUSTED.labels(**self.labels).set(0)
        if ledger.remaining() is not None:
            M.SITE_BUDGET_REMAINING.labels(**self.labels).set(ledger.remaining() or 0.0)

    @property
    def num_params(self) -> int:
        return self.federated.num_params

    def _epsilon_per_record(self) -> float:
        k = min(len(self.ledger.releases), self.mechanism.releases_per_record)
        return _record_epsilon(self.mechanism, k, self.privacy.delta)

    # -- learning -------------------------------------------------------------------------------
    def learn(
        self, X: np.ndarray, y: np.ndarray, first_event_ms: int | None = None, contribute: np.ndarray | None = None
    ) -> Scores:
        """Score every row with the personal, global and served models, then learn the labelled ones.

        ``y`` is NaN where the label is unknown. ``contribute`` (a boolean per row, default all) says
        which labelled rows may go into the federated update's windows; the others are learnt by the
        personal model and the blend only (a stream job learning again records it already released).
        """
        n = len(X)
        if n == 0:
            empty = np.zeros(0, dtype=np.float32)
            return Scores(empty, empty, empty)
        self.report.records += n
        M.SITE_RECORDS.labels(**self.labels).inc(n)
        z_global = self.federated.logits(self.base, X)
        z_personal = self.personal.prequential(X, y)  # scores, then learns
        p_served = self.served.step(z_personal, z_global, y)  # scores, then learns the labelled rows
        labelled = ~np.isnan(y)
        nl = int(labelled.sum())
        if nl:
            yl = y[labelled]
            self.local_metrics.update(yl, sigmoid(z_personal[labelled]))
            self.global_metrics.update(yl, sigmoid(z_global[labelled]))
            self.served_metrics.update(yl, p_served[labelled])
            self._watch_drift(np.abs(yl - p_served[labelled]))
            if self.contribute:
                if contribute is None:
                    self.contribution.add(X[labelled], yl)
                else:
                    keep = labelled & contribute
                    self.contribution.add(X[keep], y[keep])
            self.report.labelled += nl
            M.SITE_LABELLED.labels(**self.labels).inc(nl)
            if first_event_ms is not None:
                self.window_first_ms = (
                    first_event_ms if self.window_first_ms is None else min(first_event_ms, self.window_first_ms)
                )
        self._labelled_since_export += nl
        since = self.clock() - self._exported_at
        if since >= 1.0 or (self._labelled_since_export >= max(20, self.spec.auc_window // 10) and since >= 0.25):
            self.export_quality()  # each export sorts three windows: a few times a second at most
        return Scores(
            p_served.astype(np.float32), sigmoid(z_personal).astype(np.float32), sigmoid(z_global).astype(np.float32)
        )

    def _watch_drift(self, errors: np.ndarray) -> None:
        adwin = self.drift
        update = adwin.update
        for err in errors.tolist():
            update(err)
            if adwin.drift_detected:
                self.report.drifts += 1
                M.SITE_DRIFT.labels(**self.labels).inc()
                log.info("site=%s drift detected by ADWIN on the served error stream", self.site_id)

    def export_quality(self) -> None:
        """Rolling AUCs and log losses into the metrics and the report (during learning every second,
        or every auc_window / 10 labelled records but at most 4 times a second; and on demand: the
        processor calls it before it reports)."""
        self._labelled_since_export = 0
        self._exported_at = self.clock()
        windows = (("local", self.local_metrics), ("global", self.global_metrics), ("served", self.served_metrics))
        for name, win in windows:
            auc, ll = win.get_auc(), win.get_logloss()
            if auc is not None:
                M.SITE_AUC.labels(**self.labels, predictor=name).set(auc)
            if ll is not None:
                M.SITE_LOGLOSS.labels(**self.labels, predictor=name).set(ll)
        self.report.auc = self.served_metrics.get_auc()
        self.report.local_auc = self.local_metrics.get_auc()
        self.report.global_auc = self.global_metrics.get_auc()
        self.report.logloss = self.served_metrics.get_logloss()
        self.report.served_weight = self.served.weight
        M.SITE_SERVED_WEIGHT.labels(**self.labels).set(self.served.weight)

    def maybe_step(self) -> bool:
        """Mini-batch steps of the personal deep model when N new rows arrived or T seconds passed."""
        if not self.personal.maybe_step():
            return False
        seconds = self.personal.last_step_seconds
        if self.personal.device == "cuda":
            self._gpu_seconds += seconds * self.spec.deep.steps
            M.GPU_STEP.labels(**self.labels, device="cuda").observe(seconds)
        self.report.deep_steps = self.personal.steps_taken
        return True

    # -- updates --------------------------------------------------------------------------------
    def due(self) -> bool:
        """A full window waits, or ``every_seconds`` passed with at least ``min_records`` in the window."""
        c = self.contribution
        return c.has_full_window or (
            self.clock() - self._last_publish >= self.update.every_seconds
            and c.pending_examples >= self.update.min_records
        )

    def make_update(
        self,
        tamper: Callable[[np.ndarray], np.ndarray] | None = None,
        encode: Callable[[np.ndarray, dict[str, Any]], None] | None = None,
        merge: bool = False,
        durable: bool = True,
    ) -> dict[str, Any] | None:
        """The signed update record of the next window, or None when the budget forbids one.

        The ledger entry and the next sequence number are durable when this returns (with
        ``durable=False``, once ``self.ledger.sync()`` has returned); the caller commits its
        consumed offsets and only then produces the record. ``tamper`` (tests of the
        aggregator's defences only) rewrites the noised delta as a malicious site would.
        ``encode`` replaces the record's parameters before signing: secure aggregation masks the
        noised *sum* (``delta * num_examples``), which the aggregator divides by the buffer's slots;
        it sends one update per version, so ``merge`` releases every full window in one sum.
        """
        m = self.mechanism
        probe = Release(0, 0, m.noise_multiplier, m.clip_norm, 0, m.kind, m.steps, m.sampling_rate)
        try:
            self.ledger.check(probe)
        except PrivacyBudgetExceeded as exc:
            if not self.report.budget_exhausted:
                log.warning("site=%s stops publishing: %s (keeps learning locally)", self.site_id, exc)
            self.report.budget_exhausted = True
            self.report.updates_withheld += 1
            M.SITE_BUDGET_EXHAUSTED.labels(**self.labels).set(1)
            while self.contribution.release(close_current=True, merge=True) is not None:
                pass  # dropped: these windows never leave
            self._reset_window()
            return None
        c = self.contribution.release(close_current=not self.contribution.has_full_window, merge=merge)
        if c is None:
            return None
        M.SITE_UPDATE_NORM.labels(**self.labels).observe(c.grad_norm)
        delta = c.delta
        if tamper is not None:
            delta = tamper(delta).astype(np.float32)
        seq = self.state.advance()
        spent = self.ledger.record(
            Release(
                seq,
                int(time.time() * 1000),
                m.noise_multiplier,
                m.clip_norm,
                c.num_examples,
                m.kind,
                m.steps,
                m.sampling_rate,
            ),
            durable=durable,
        )
        now_ms = int(time.time() * 1000)
        cpu_s, gpu_s = self.cpu.read(), self._gpu_seconds
        gpu_j = self.gpu_energy.read() if self.gpu_energy is not None else None
        self._gpu_seconds = 0.0
        M.SITE_CPU.labels(**self.labels).inc(cpu_s)
        M.SITE_GPU.labels(**self.labels).inc(gpu_s)
        if gpu_j is not None:
            M.SITE_GPU_ENERGY.labels(**self.labels).inc(gpu_j)
        record: dict[str, Any] = {
            "topology": self.topology,
            "model": self.spec.name,
            "site_id": self.site_id,
            "sequence": seq,
            "base_version": self.base_version,
            "created_ms": now_ms,
            "num_examples": c.num_examples,
            "num_params": int(delta.size),
            "params": params_to_bytes(delta),
            "clip_norm": m.clip_norm,
            "noise_std": c.noise_std,
            "epsilon_spent": spent,
            "delta": self.privacy.delta,
            "first_event_ms": self.window_first_ms or now_ms,
            "cpu_seconds": cpu_s,
            "gpu_seconds": gpu_s,
            "gpu_energy_joules": gpu_j,
            "mechanism": m.kind,
            "noise_multiplier": m.noise_multiplier,
            "steps": m.steps,
            "sampling_rate": m.sampling_rate,
            "worker": self.worker,
        }
        if encode is not None:
            encode(delta.astype(np.float64) * c.num_examples, record)
        self.signer.sign(record)
        log.info(
            "site=%s update seq=%d base=%d examples=%d grad-norm=%.3f clipped=%.0f%% eps=%.3f",
            sequence_space(self.site_id, self.worker),
            seq,
            self.base_version,
            c.num_examples,
            c.grad_norm,
            100 * c.clipped,
            spent,
        )
        self.report.updates_published += 1
        self.report.last_sequence = seq
        self.report.epsilon = spent
        self.report.epsilon_per_record = self._epsilon_per_record()
        M.SITE_UPDATES.labels(**self.labels).inc()
        M.SITE_EPSILON.labels(**self.labels).set(spent)
        M.SITE_EPSILON_RECORD.labels(**self.labels).set(self.report.epsilon_per_record)
        if self.ledger.remaining() is not None:
            M.SITE_BUDGET_REMAINING.labels(**self.labels).set(self.ledger.remaining() or 0.0)
        self._reset_window()
        return record

    def _reset_window(self) -> None:
        self.window_first_ms = None
        self._last_publish = self.clock()

    # -- global versions ------------------------------------------------------------------------
    def wants(self, version: int, sha: str) -> bool:
        """Whether a version record should replace the current base.

        A repeated version number with other content replaces the earlier one: an aborted
        transaction stays visible on brokers without read_committed filtering.
        """
        return version > self.base_version or (version == self.base_version and sha != self.base_sha)

    def wanted_version(self, codec: AvroCodec, value: bytes | None) -> tuple[int, np.ndarray, str] | None:
        """``(version, parameters, digest)`` of a model version message to rebase on, else None.

        None for another model's version or one :meth:`wants` declines; raises
        :class:`~streamfed.errors.SerializationError` or ``KeyError`` for an unreadable record.
        """
        rec = codec.decode(value)
        if rec["model"] != self.spec.name:
            return None
        version, sha = int(rec["version"]), str(rec["params_sha256"])
        if not self.wants(version, sha):
            return None
        return version, params_from_bytes(rec["params"], self.num_params), sha

    def count_dead_letter(self, reason: str) -> None:
        """Count one record sent to the dead-letter topic, in the report and the metric."""
        self.report.dead_letters += 1
        self.report.dead_letter_reasons[reason] = self.report.dead_letter_reasons.get(reason, 0) + 1
        M.SITE_DEAD_LETTERS.labels(**self.labels, reason=reason).inc()

    def rebase(self, version: int, params: np.ndarray, sha: str) -> None:
        """Serve and contribute from a new global version (the personal model is untouched)."""
        if params.shape != self.base.shape:
            raise ValueError(f"version {version} has {params.size} parameters, the model {self.base.size}")
        self.base = params.astype(np.float32)
        self.base_version = version
        self.base_sha = sha
        self.contribution.rebase(self.base)
        self.report.base_version = version
        self.report.rebases += 1
        M.SITE_BASE_VERSION.labels(**self.labels).set(version)
