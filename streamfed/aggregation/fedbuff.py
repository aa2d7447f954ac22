"""FedBuff (Nguyen et al. 2022): buffered asynchronous aggregation, no global rounds.

Every ``buffer_size`` accepted updates the server combines their deltas, weighted by example
count and staleness ``s = version - base_version`` as ``(1 + s) ** -a`` (``a = 0.5`` gives
``1 / sqrt(1 + s)``), and takes a server step ``params += server_lr * combined``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamfed.aggregation.rules import Rule
from streamfed.topology.spec import AggregationSpec


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """>>> round(staleness_weight(3), 3)
    0.5
    """
    if staleness < 0:
        raise ValueError("staleness cannot be negative")
    return float((1.0 + staleness) ** -exponent)


@dataclass
class PendingUpdate:
    site_id: str
    sequence: int
    base_version: int
    num_examples: int
    delta: npt.NDArray[np.float32]
    topic: str = ""
    partition: int = 0
    offset: int = 0
    created_ms: int = 0
    first_event_ms: int = 0
    epsilon_spent: float = 0.0
    noise_std: float = 0.0
    clip_norm: float = 0.0
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0
    gpu_energy_joules: float | None = None
    staleness: int = 0
    weight: float = 0.0
    shares: dict[str, bytes] = field(default_factory=dict)  # secure aggregation: encrypted self-mask shares


@dataclass
class FedBuff:
    spec: AggregationSpec
    rule: Rule
    buffer: list[PendingUpdate] = field(default_factory=list)

    def weight(self, upd: PendingUpdate, version: int) -> float:
        s = max(0, version - upd.base_version)
        w = staleness_weight(s, self.spec.staleness_exponent)
        if self.spec.weight_by_examples:
            w *= max(1, upd.num_examples)
        return w

    def add(self, upd: PendingUpdate) -> bool:
        """Buffer an accepted update; True when the buffer is full and a version is due."""
        self.buffer.append(upd)
        return len(self.buffer) >= self.spec.buffer_size

    def aggregate(
        self, params: npt.NDArray[np.float32], version: int
    ) -> tuple[npt.NDArray[np.float32], list[PendingUpdate]]:
        """New parameters from the buffer (which is emptied); returns them and the updates used."""
        used, self.buffer = self.buffer, []
        for u in used:
            u.staleness = max(0, version - u.base_version)
            u.weight = self.weight(u, version)
        deltas = np.stack([u.delta for u in used]).astype(np.float32)
        weights = np.array([u.weight for u in used], dtype=np.float64)
        combined = self.rule(deltas, weights)
        new = params.astype(np.float64) + self.spec.server_learning_rate * combined.astype(np.float64)
        return new.astype(np.float32), used
