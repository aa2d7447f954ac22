"""FedBuff (Nguyen et al. 2022): buffered asynchronous aggregation, no global rounds.

Every ``buffer_size`` accepted updates the server combines their deltas, weighted by example
count and staleness ``s = version - base_version`` as ``(1 + s) ** -a`` (``a = 0.5`` gives
``1 / sqrt(1 + s)``), and the server optimizer applies the combined delta as a pseudo-gradient
(FedOpt, Reddi et al. 2021): ``sgd`` is ``params += server_lr * combined``; ``momentum`` and ``adam``
keep state, which lives in the aggregator's checkpoint with the parameters (a rollback restores it).
Everything here is post-processing of noised updates: it costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamfed.aggregation.rules import Rule
from streamfed.privacy.signing import sequence_space
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
    worker: str = ""  # the site worker whose sequence space holds ``sequence`` ("": the site as one process)

    @property
    def stream(self) -> str:
        """The sequence space: ``site`` or ``site/worker`` (site ids have no ``/``)."""
        return sequence_space(self.site_id, self.worker)


OptState = dict[str, npt.NDArray[np.float32]]


class ServerOptimizer:
    """The server step: ``sgd``, ``momentum`` or ``adam`` on the combined delta (a descent direction).

    >>> from streamfed.topology.spec import AggregationSpec
    >>> opt = ServerOptimizer(AggregationSpec(server_optimizer="momentum", server_momentum=0.5))
    >>> p, st = opt.step(np.zeros(1, np.float32), np.ones(1, np.float32), {})
    >>> p, st = opt.step(p, np.ones(1, np.float32), st)
    >>> p.tolist()
    [2.5]
    """

    def __init__(self, spec: AggregationSpec) -> None:
        self.kind = spec.server_optimizer
        self.lr = spec.server_learning_rate
        self.beta1 = spec.server_momentum
        self.beta2 = spec.server_beta2
        self.eps = spec.server_epsilon

    def step(
        self, params: npt.NDArray[np.float32], update: npt.NDArray[np.float32], state: OptState
    ) -> tuple[npt.NDArray[np.float32], OptState]:
        """New parameters and optimizer state; ``state`` is not modified."""
        p = params.astype(np.float64)
        u = update.astype(np.float64)
        if self.kind == "sgd":
            return (p + self.lr * u).astype(np.float32), {}
        m = state.get("m", np.zeros_like(params)).astype(np.float64)
        if self.kind == "momentum":
            m = self.beta1 * m + u
            return (p + self.lr * m).astype(np.float32), {"m": m.astype(np.float32)}
        v = state.get("v", np.zeros_like(params)).astype(np.float64)
        m = self.beta1 * m + (1 - self.beta1) * u
        v = self.beta2 * v + (1 - self.beta2) * u * u
        new = p + self.lr * m / (np.sqrt(v) + self.eps)
        return new.astype(np.float32), {"m": m.astype(np.float32), "v": v.astype(np.float32)}


@dataclass
class FedBuff:
    spec: AggregationSpec
    rule: Rule
    buffer: list[PendingUpdate] = field(default_factory=list)
    optimizer: ServerOptimizer | None = None

    def __post_init__(self) -> None:
        if self.optimizer is None:
            self.optimizer = ServerOptimizer(self.spec)

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

    def combine(self, version: int) -> tuple[npt.NDArray[np.float32], list[PendingUpdate]]:
        """The buffer's combined delta by the rule (the buffer is emptied); and the updates used."""
        used, self.buffer = self.buffer, []
        for u in used:
            u.staleness = max(0, version - u.base_version)
            u.weight = self.weight(u, version)
        deltas = np.stack([u.delta for u in used]).astype(np.float32)
        weights = np.array([u.weight for u in used], dtype=np.float64)
        return self.rule(deltas, weights), used

    def aggregate(
        self, params: npt.NDArray[np.float32], version: int, state: OptState | None = None
    ) -> tuple[npt.NDArray[np.float32], list[PendingUpdate], OptState]:
        """New parameters from the buffer (which is emptied), the updates used, the optimizer state."""
        combined, used = self.combine(version)
        assert self.optimizer is not None
        new, new_state = self.optimizer.step(params, combined, state or {})
        return new, used, new_state
