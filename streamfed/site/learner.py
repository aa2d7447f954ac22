"""A site's learning and privacy logic with no Kafka in it.

:class:`SiteLearner` takes decoded records, predicts then learns, steps the deep learner, and turns
an update window into a clipped, noised, accounted and signed update record. The
:class:`~streamfed.site.processor.SiteProcessor` feeds it from Kafka; tests and simulations feed it
directly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from river import drift
from river import metrics as rmetrics

from streamfed import metrics as M
from streamfed.energy import CpuClock, GpuEnergyMeter
from streamfed.errors import PrivacyBudgetExceeded
from streamfed.learners.model import SiteModel, initial_params
from streamfed.learners.torch_mlp import ReplayBuffer
from streamfed.privacy.accountant import PrivacyLedger, epsilon_for
from streamfed.privacy.mechanisms import add_gaussian_noise, clip_l2, clip_segments, csprng
from streamfed.privacy.signing import SiteSigner
from streamfed.serde.tensors import params_to_bytes, sha256_hex
from streamfed.topology.spec import ModelSpec, PrivacySpec, UpdateSpec

log = logging.getLogger(__name__)


@dataclass
class SiteReport:
    """What a run did (also written as the site's JSON summary)."""

    site: str
    records: int = 0
    labelled: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    updates_published: int = 0
    updates_withheld: int = 0
    updates_pending: int = 0  # made but not yet delivered to the broker
    updates_dropped: int = 0  # undelivered and dropped: more than the kept maximum
    producer_recreations: int = 0
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

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.next_sequence = 1
        if path is not None and path.exists():
            self.next_sequence = int(json.loads(path.read_text())["next_sequence"])

    def advance(self) -> int:
        seq = self.next_sequence
        self.next_sequence += 1
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"next_sequence": self.next_sequence}))
            tmp.replace(self.path)
        return seq


class PrequentialWindow:
    """Rolling ROC AUC and log loss over a sliding window of labelled predictions."""

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


class SiteLearner:
    """Predict-then-learn on labelled records, deep steps, and private updates of each window."""

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
        sigma: float,
        rng: np.random.Generator | None = None,
        clock: Callable[[], float] = time.monotonic,
        device: str | None = None,
        noise_divisor: float = 1.0,
    ) -> None:
        self.topology = topology
        self.site_id = site_id
        self.spec = model_spec
        self.privacy = privacy
        self.update = update
        self.signer = signer
        self.ledger = ledger
        self.state = state
        self.sigma = sigma
        # Secure aggregation: each site adds sigma C / sqrt(t), the unmasked sum carries sigma C.
        self.noise_divisor = noise_divisor
        self.rng = rng if rng is not None else csprng()
        self.sample_rng = np.random.default_rng(self.rng.integers(1 << 62))
        self.clock = clock

        self.model = SiteModel(model_spec, device=device)
        self.global_model = SiteModel(model_spec, device="cpu")
        self.base = initial_params(model_spec)
        self.base_version = 0
        self.base_sha = sha256_hex(params_to_bytes(self.base))
        self.model.set_params(self.base)
        self.global_model.set_params(self.base)
        self.replay = ReplayBuffer(self.model.featurizer.dim, model_spec.deep.replay_size)
        self.local_metrics = PrequentialWindow(model_spec.auc_window)
        self.global_metrics = PrequentialWindow(model_spec.auc_window)
        self.drift = drift.ADWIN()
        self.report = SiteReport(site=site_id, device=str(self.model.deep.device) if self.model.deep else "cpu")
        self.report.epsilon = ledger.spent
        self.report.last_sequence = state.next_sequence - 1
        self.report.epsilon_per_record = self._epsilon_per_record()

        self.labels = {"topology": topology, "site": site_id}
        M.start_site(topology, site_id)
        self.window_examples = 0
        self.window_first_ms: int | None = None
        self._last_publish = clock()
        self._since_step = 0
        self._last_step = clock()
        self.cpu = CpuClock()
        on_gpu = self.model.deep is not None and self.model.deep.device.type == "cuda"
        self.gpu_energy = GpuEnergyMeter() if on_gpu else None
        self._gpu_seconds = 0.0
        M.SITE_EPSILON.labels(**self.labels).set(ledger.spent)
        M.SITE_EPSILON_RECORD.labels(**self.labels).set(self.report.epsilon_per_record)
        M.SITE_BUDGET_EXHAUSTED.labels(**self.labels).set(0)
        if ledger.remaining() is not None:
            M.SITE_BUDGET_REMAINING.labels(**self.labels).set(ledger.remaining() or 0.0)

    def _epsilon_per_record(self) -> float:
        k = min(len(self.ledger.releases), self.privacy.max_updates_per_record)
        return epsilon_for(self.sigma, k, self.privacy.delta)

    # -- learning -------------------------------------------------------------------------------
    def learn(self, X: np.ndarray, y: np.ndarray, first_event_ms: int | None = None) -> np.ndarray:
        """Score every row with the current model (before learning it), then learn the labelled ones.

        ``y`` is NaN where the label is unknown. Returns the local model's predictions.
        """
        n = len(X)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        self.report.records += n
        M.SITE_RECORDS.labels(**self.labels).inc(n)
        p_global = self.global_model.predict_proba_many(X)
        p_local = self.model.prequential_many(X, y)
        labelled = ~np.isnan(y)
        nl = int(labelled.sum())
        if nl:
            yl, pl = y[labelled], p_local[labelled]
            self.local_metrics.update(yl, pl)
            self.global_metrics.update(yl, p_global[labelled])
            for err in np.abs(yl - pl).tolist():
                self.drift.update(err)
                if self.drift.drift_detected:
                    self.report.drifts += 1
                    M.SITE_DRIFT.labels(**self.labels).inc()
                    log.info("site=%s drift detected by ADWIN on the error stream", self.site_id)
            self.replay.add(X[labelled], yl, window=self.state.next_sequence)
            self.report.labelled += nl
            self.window_examples += nl
            self._since_step += nl
            M.SITE_LABELLED.labels(**self.labels).inc(nl)
            if first_event_ms is not None:
                self.window_first_ms = (
                    first_event_ms if self.window_first_ms is None else min(first_event_ms, self.window_first_ms)
                )
        self._export_quality()
        return p_local

    def _export_quality(self) -> None:
        for name, win in (("local", self.local_metrics), ("global", self.global_metrics)):
            auc, ll = win.get_auc(), win.get_logloss()
            if auc is not None:
                M.SITE_AUC.labels(**self.labels, model=name).set(auc)
            if ll is not None:
                M.SITE_LOGLOSS.labels(**self.labels, model=name).set(ll)
        self.report.auc = self.local_metrics.get_auc()
        self.report.global_auc = self.global_metrics.get_auc()
        self.report.logloss = self.local_metrics.get_logloss()

    def maybe_step(self) -> bool:
        """Mini-batch steps of the deep learner when N new rows arrived or T seconds passed."""
        deep = self.model.deep
        if deep is None or len(self.replay) == 0 or self._since_step == 0:
            return False
        d = self.spec.deep
        if self._since_step < d.step_every_records and self.clock() - self._last_step < d.step_every_seconds:
            return False
        deep.train_steps(self.replay, d.steps, d.batch_size, self.sample_rng)
        if deep.device.type == "cuda":
            self._gpu_seconds += deep.last_step_seconds * d.steps
        M.GPU_STEP.labels(**self.labels, device=deep.device.type).observe(deep.last_step_seconds)
        self.report.deep_steps += d.steps
        self._since_step = 0
        self._last_step = self.clock()
        return True

    # -- updates --------------------------------------------------------------------------------
    def due(self) -> bool:
        u = self.update
        return self.window_examples >= u.every_records or (
            self.clock() - self._last_publish >= u.every_seconds and self.window_examples >= u.min_records
        )

    def _clip(self, delta: np.ndarray) -> tuple[np.ndarray, float]:
        C = self.privacy.clip_norm
        share = self.privacy.online_clip_share
        if share is not None and self.model.deep is not None:
            n_online = len(self.model.featurizer.names) + 1
            bounds = [(0, n_online, C * math.sqrt(share)), (n_online, delta.size, C * math.sqrt(1 - share))]
            return clip_segments(delta, bounds)
        return clip_l2(delta, C)

    def make_update(
        self,
        tamper: Callable[[np.ndarray], np.ndarray] | None = None,
        encode: Callable[[np.ndarray, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """The signed update record of the current window, or None when the budget forbids one.

        The ledger entry and the next sequence number are durable when this returns; the caller
        commits its consumed offsets and only then produces the record. ``tamper`` (tests of the
        aggregator's defences only) rewrites the noised delta as a malicious site would.
        ``encode`` replaces the record's parameters before signing (secure aggregation masks them).
        """
        C = self.privacy.clip_norm
        delta = self.model.get_params() - self.base
        try:
            eps_after = self.ledger.check(self.sigma)
        except PrivacyBudgetExceeded as exc:
            if not self.report.budget_exhausted:
                log.warning("site=%s stops publishing: %s (keeps learning locally)", self.site_id, exc)
            self.report.budget_exhausted = True
            self.report.updates_withheld += 1
            M.SITE_BUDGET_EXHAUSTED.labels(**self.labels).set(1)
            self._reset_window()
            return None
        clipped, norm = self._clip(delta)
        M.SITE_UPDATE_NORM.labels(**self.labels).observe(norm)
        noise_std = self.sigma * C / self.noise_divisor
        noised = add_gaussian_noise(clipped, noise_std, self.rng)
        if tamper is not None:
            noised = tamper(noised).astype(np.float32)
        seq = self.state.advance()
        spent = self.ledger.record(seq, self.sigma, C, self.window_examples)
        assert abs(spent - eps_after) < 1e-9
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
            "num_examples": self.window_examples,
            "num_params": int(noised.size),
            "params": params_to_bytes(noised),
            "clip_norm": C,
            "noise_std": noise_std,
            "epsilon_spent": spent,
            "delta": self.privacy.delta,
            "first_event_ms": self.window_first_ms or now_ms,
            "cpu_seconds": cpu_s,
            "gpu_seconds": gpu_s,
            "gpu_energy_joules": gpu_j,
        }
        if encode is not None:
            encode(noised, record)
        self.signer.sign(record)
        log.info(
            "site=%s update seq=%d base=%d examples=%d norm=%.3f eps=%.3f",
            self.site_id,
            seq,
            self.base_version,
            self.window_examples,
            norm,
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
        # After a release the local model restarts from the global base: whatever it learnt left
        # only through the noised update. Rows stay in the replay buffer for at most k releases.
        self.model.set_params(self.base)
        if self.model.deep is not None:
            self.model.deep.reset_optimizer()
        self.replay.evict_windows_before(seq - self.privacy.max_updates_per_record + 2)
        self._reset_window()
        return record

    def _reset_window(self) -> None:
        self.window_examples = 0
        self.window_first_ms = None
        self._last_publish = self.clock()

    # -- global versions ------------------------------------------------------------------------
    def wants(self, version: int, sha: str) -> bool:
        """Whether a version record should replace the current base.

        A repeated version number with other content replaces the earlier one: an aborted
        transaction stays visible on brokers without read_committed filtering.
        """
        return version > self.base_version or (version == self.base_version and sha != self.base_sha)

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
        M.SITE_BASE_VERSION.labels(**self.labels).set(version)
