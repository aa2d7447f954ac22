"""Verification of one update record, with no Kafka in it: accepted into the buffer, or rejected with a reason.

Checks, in order: Avro decode, signature (site and key known), sequence strictly after the last
seen (replay), model and topology, shape, and then either the secure-aggregation checks or finite
values, the L2 norm bound, the base version (not ahead; not more than ``max_staleness`` versions
behind *when the update was published*, so an aggregator's own downtime does not make the backlog
stale) and the declared metadata (mechanism as the topology's, noise multiplier at least the
calibrated one, a positive slot count).
Every reason is one of :data:`streamfed.metrics.REJECT_REASONS`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from streamfed.aggregation.fedbuff import PendingUpdate
from streamfed.aggregation.records import ModelInfo
from streamfed.aggregation.secure import SecureBuffer
from streamfed.errors import SerializationError, SignatureError
from streamfed.privacy.mechanisms import l2_norm
from streamfed.privacy.signing import UpdateVerifier, sequence_space
from streamfed.serde.avro import AvroCodec, SchemaRegistry
from streamfed.serde.tensors import params_from_bytes
from streamfed.topology.spec import AggregationSpec


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def pending_update(
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
        worker=upd.get("worker") or "",
        **extra,
    )


class UpdateChecks:
    """The aggregator's checks of an update; keeps the last sequence seen per sequence space (a site,
    or each worker of a site run as several processes)."""

    def __init__(
        self,
        model: ModelInfo,
        spec: AggregationSpec,
        keys: UpdateVerifier,
        secure: SecureBuffer | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.keys = keys
        self.secure = secure
        self.codec = AvroCodec("model_update", registry)
        self.last_seq: dict[str, int] = {}
        # version -> its commit time (ms), for the staleness an update had when it was published
        self.version_times: dict[int, int] = {}

    def verify(
        self, value: bytes | None, version: int, topic: str = "", partition: int = 0, offset: int = 0
    ) -> PendingUpdate:
        """Check one update against the current ``version``; raises :class:`Rejected` with a reason."""
        try:
            upd = self.codec.decode(value)
        except SerializationError as exc:
            raise Rejected("decode", str(exc)) from exc
        try:
            self.keys.verify(upd)
        except SignatureError as exc:
            text = str(exc)
            reason = (
                "unknown_site"
                if text.startswith("unknown site")
                else ("unknown_key" if "not registered" in text else "signature")
            )
            raise Rejected(reason, text) from exc
        space, seq = sequence_space(upd["site_id"], upd.get("worker") or ""), int(upd["sequence"])
        last = self.last_seq.get(space, 0)
        if seq <= last:
            raise Rejected("replay", f"{space}#{seq} is not after the last sequence seen, {last}")
        self.last_seq[space] = seq
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
        self._check_metadata(upd)
        if self.secure is not None:
            if upd.get("worker"):
                raise Rejected("secure", f"an update of worker {upd['worker']}: secure aggregation takes one per site")
            problem = self.secure.check(upd, version)
            if problem is not None:
                raise Rejected(*problem)
            return pending_update(
                upd, delta.view(np.uint32), topic, partition, offset, shares=dict(upd["self_mask_shares"])
            )
        if upd.get("secure_buffer") is not None:
            raise Rejected("secure", "a masked update: this topology does not aggregate securely")
        if not np.isfinite(delta).all():
            raise Rejected("not_finite", f"{int((~np.isfinite(delta)).sum())} non-finite parameters")
        norm = l2_norm(delta)
        limit = self.model.norm_bound(int(upd["num_examples"]))
        if norm > limit:
            raise Rejected("norm", f"L2 norm {norm:.4g} > {limit:.4g} (for {upd['num_examples']} examples)")
        base = int(upd["base_version"])
        if base > version:
            raise Rejected("future_base", f"base version {base} is ahead of the current {version}")
        staleness = version - base
        behind = self.published_staleness(base, version, int(upd["created_ms"]))
        if behind > self.spec.max_staleness:
            raise Rejected(
                "stale",
                f"{behind} versions newer than its base {base} existed when it was published "
                f"(max_staleness {self.spec.max_staleness})",
            )
        return pending_update(upd, delta, topic, partition, offset, staleness=staleness)

    def published_staleness(self, base: int, version: int, created_ms: int) -> int:
        """Versions after ``base`` that were committed before the update was created: how far behind the
        site was when it published. Versions made later (while a backlog is read after an aggregator
        outage) do not count against it; a version of unknown time counts."""
        return sum(1 for v in range(base + 1, version + 1) if self.version_times.get(v, 0) <= created_ms)

    def _check_metadata(self, upd: dict[str, Any]) -> None:
        if int(upd["num_examples"]) < 1 or not math.isfinite(float(upd["noise_std"])):
            raise Rejected("metadata", "example count below 1 or a non-finite noise std")
        if upd["mechanism"] != self.model.mechanism:
            raise Rejected("metadata", f"mechanism {upd['mechanism']!r}, the topology's is {self.model.mechanism!r}")
        declared = float(upd["noise_multiplier"])
        if not declared >= self.model.noise_multiplier * (1 - 1e-9):
            raise Rejected(
                "metadata",
                f"noise multiplier {declared:.4g} below the topology's calibrated {self.model.noise_multiplier:.4g}",
            )
