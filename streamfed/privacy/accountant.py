"""Privacy accounting with dp-accounting over the mechanism actually applied.

Each published update is the Gaussian mechanism on a delta clipped to L2 norm ``C`` with noise
std ``sigma * C``. Adding or removing one record changes the clipped delta by at most ``2C`` (both
vectors lie in the ball of radius ``C``), so one release is a Gaussian mechanism with noise
multiplier ``z = sigma / 2`` relative to its sensitivity. A record can influence at most ``k``
releases (its update window plus the replay-buffer retention), so its epsilon is that of ``k``
composed releases; a site's lifetime loss composes all its releases.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import dp_accounting
from dp_accounting import pld, rdp

from streamfed.errors import PrivacyBudgetExceeded
from streamfed.topology.spec import PrivacySpec

log = logging.getLogger(__name__)

SENSITIVITY_FACTOR = 2.0  # replace/add/remove of one record moves a clipped delta by at most 2C


def _event(sigma: float, count: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / SENSITIVITY_FACTOR), count)


def epsilon_for(sigma: float, releases: int, delta: float, method: str = "rdp") -> float:
    """Epsilon at ``delta`` of ``releases`` Gaussian releases with noise std ``sigma * C``."""
    if releases <= 0:
        return 0.0
    acc: dp_accounting.PrivacyAccountant
    if method == "rdp":
        acc = rdp.RdpAccountant()
    elif method == "pld":
        acc = pld.PLDAccountant()
    else:
        raise ValueError(f'unknown accounting method "{method}"; valid: rdp, pld')
    acc.compose(_event(sigma, releases))
    return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(epsilon: float, delta: float, k: int) -> float:
    """The smallest ``sigma`` (noise std / clip) for which ``k`` releases cost at most ``epsilon``."""
    z = dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant,
        lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), k),
        epsilon,
        delta,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        tol=1e-4,
    )
    return float(z) * SENSITIVITY_FACTOR


def resolve_noise_multiplier(spec: PrivacySpec) -> float:
    """``spec.noise_multiplier`` if given, else calibrated from the per-record target epsilon."""
    if spec.noise_multiplier is not None:
        return spec.noise_multiplier
    return calibrate_noise_multiplier(spec.epsilon, spec.delta, spec.max_updates_per_record)


@dataclass(frozen=True)
class Release:
    sequence: int
    created_ms: int
    sigma: float
    clip_norm: float
    num_examples: int


class PrivacyLedger:
    """Every release a site made, persisted as JSON lines so a restart never forgets what was spent."""

    def __init__(self, delta: float, budget_epsilon: float | None = None, path: Path | None = None) -> None:
        self.delta = delta
        self.budget_epsilon = budget_epsilon
        self.path = path
        self.releases: list[Release] = []
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.releases.append(Release(**json.loads(line)))
            log.info("privacy ledger %s: %d earlier releases", path, len(self.releases))
        self._spent = self._epsilon(Counter(r.sigma for r in self.releases))

    def _epsilon(self, by_sigma: Counter[float]) -> float:
        if not by_sigma:
            return 0.0
        acc = rdp.RdpAccountant()
        for sigma, n in by_sigma.items():
            acc.compose(_event(sigma, n))
        return float(acc.get_epsilon(self.delta))

    @property
    def spent(self) -> float:
        """Lifetime epsilon at ``delta`` over all releases so far (RDP)."""
        return self._spent

    def epsilon_if_released(self, sigma: float) -> float:
        c = Counter(r.sigma for r in self.releases)
        c[sigma] += 1
        return self._epsilon(c)

    def remaining(self) -> float | None:
        return None if self.budget_epsilon is None else max(0.0, self.budget_epsilon - self._spent)

    def check(self, sigma: float) -> float:
        """Epsilon after one more release; raises :class:`PrivacyBudgetExceeded` past the budget."""
        after = self.epsilon_if_released(sigma)
        if self.budget_epsilon is not None and after > self.budget_epsilon:
            raise PrivacyBudgetExceeded(
                f"release would spend epsilon {after:.3f} > budget {self.budget_epsilon:.3f} (delta {self.delta:g})"
            )
        return after

    def record(self, sequence: int, sigma: float, clip_norm: float, num_examples: int) -> float:
        rel = Release(sequence, int(time.time() * 1000), sigma, clip_norm, num_examples)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps(asdict(rel)) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        self.releases.append(rel)
        self._spent = self._epsilon(Counter(r.sigma for r in self.releases))
        return self._spent
