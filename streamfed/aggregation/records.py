"""What the aggregator knows of the model, and the version and lineage records it writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamfed.aggregation.fedbuff import PendingUpdate
from streamfed.energy import estimate
from streamfed.learners.base import Segment
from streamfed.serde.tensors import params_to_bytes, sha256_hex
from streamfed.topology.spec import EnergySpec


@dataclass(frozen=True)
class ModelInfo:
    """The model's name, shape and initial parameters, and what an honest update must declare."""

    topology: str
    name: str
    layout: list[Segment]
    feature_order: list[str]
    schema_fingerprint: str
    initial_params: np.ndarray
    delta: float
    max_update_norm: float  # for an update of update.min_records slots (norm_limit gives any count)
    energy: EnergySpec = field(default_factory=EnergySpec)
    mechanism: str = "window_sum"
    noise_multiplier: float = 0.0  # updates declaring less are rejected (reason metadata)
    norm_limit: Callable[[int], float] | None = None  # largest honest L2 norm for a slot count
    scoring: str | None = None  # what serving apps need to score raw records (streamfed.serving)

    def norm_bound(self, examples: int) -> float:
        return self.norm_limit(examples) if self.norm_limit is not None else self.max_update_norm


@dataclass(frozen=True)
class VersionMeta:
    """Who writes a version: the rule and server step, and the producer's identity."""

    rule: str
    server_learning_rate: float
    server_optimizer: str
    producer_id: str
    run_id: str


def cost(model: ModelInfo, used: list[PendingUpdate], aggregator_cpu: float) -> dict[str, Any]:
    """What a version cost: the sites' CPU/GPU time reported with its updates, the aggregator's CPU
    time since the previous version, and the energy and CO2e estimate."""
    site_cpu = sum(u.cpu_seconds for u in used)
    site_gpu = sum(u.gpu_seconds for u in used)
    measured = [u.gpu_energy_joules for u in used if u.gpu_energy_joules is not None]
    gpu_j = sum(measured) if measured else None
    unmeasured_gpu = sum(u.gpu_seconds for u in used if u.gpu_energy_joules is None)
    joules, co2e = estimate(model.energy, site_cpu + aggregator_cpu, unmeasured_gpu, gpu_j or 0.0)
    return {
        "site_cpu_seconds": site_cpu,
        "site_gpu_seconds": site_gpu,
        "aggregator_cpu_seconds": aggregator_cpu,
        "gpu_energy_joules_measured": gpu_j,
        "energy_joules": joules,
        "co2e_grams": co2e,
    }


def version_record(
    model: ModelInfo,
    meta: VersionMeta,
    version: int,
    parent: int,
    params: np.ndarray,
    used: list[PendingUpdate],
    cost_doc: dict[str, Any],
) -> dict[str, Any]:
    blob = params_to_bytes(params)
    return {
        "model": model.name,
        "topology": model.topology,
        "version": version,
        "parent_version": parent,
        "created_ms": int(time.time() * 1000),
        "dtype": "float32",
        "params": blob,
        "params_sha256": sha256_hex(blob),
        "layout": [{"name": s.name, "shape": list(s.shape)} for s in model.layout],
        "feature_order": list(model.feature_order),
        "schema_fingerprint": model.schema_fingerprint,
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
                "worker": u.worker,
            }
            for u in used
        ],
        "cost": cost_doc,
        "rule": meta.rule,
        "server_learning_rate": meta.server_learning_rate,
        "delta": model.delta,
        "quality": {},
        "producer_id": meta.producer_id,
        "run_id": meta.run_id,
        "scoring": model.scoring,
    }


def lineage_record(record: dict[str, Any], used: list[PendingUpdate]) -> dict[str, Any]:
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
                "worker": u.worker,
            }
            for u in used
        ],
        "cost": record["cost"],
        "producer_id": record["producer_id"],
        "run_id": record["run_id"],
    }
