"""Synthetic card transactions: per-site fraud rates and merchant mixes (non-IID) and drift.

Fraud depends on the amount, the hour, card presence, distance from home, account age and the
merchant category. The categories fraudsters favour rotate over ``drift_period_seconds``
(concept drift), and each site has its own base rate and mix of online and night activity.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np

from streamfed.topology.spec import SimulatorSpec

MERCHANT_CATEGORIES = (
    "grocery",
    "fuel",
    "restaurant",
    "online_retail",
    "electronics",
    "travel",
    "pharmacy",
    "entertainment",
)
# log-normal amount parameters per category (median ~ exp(mu))
_AMOUNT = {
    "grocery": (3.4, 0.6),
    "fuel": (3.7, 0.4),
    "restaurant": (3.3, 0.7),
    "online_retail": (3.9, 0.9),
    "electronics": (5.2, 0.9),
    "travel": (5.6, 0.8),
    "pharmacy": (3.0, 0.6),
    "entertainment": (3.6, 0.8),
}
_BASE_MIX = np.array([0.26, 0.12, 0.16, 0.16, 0.06, 0.05, 0.09, 0.10])
# categories fraud moves through over time (drift)
_HOT = ("online_retail", "electronics", "travel", "entertainment")


class TransactionSimulator:
    """Generates CardTransaction records for one site.

    >>> sim = TransactionSimulator("bank-a", SimulatorSpec(seed=1))
    >>> recs = sim.batch(1000, t=0.0)
    >>> len(recs), sorted(recs[0])[:3]
    (1000, ['account_age_days', 'amount', 'card_present'])
    """

    def __init__(self, site_id: str, spec: SimulatorSpec, seed: int | None = None) -> None:
        self.site_id = site_id
        self.spec = spec
        s = spec.seed if spec.seed is not None else seed
        self.rng = np.random.default_rng(s)
        self.prefix = uuid.UUID(int=int(self.rng.integers(1 << 62))).hex[:8]
        self.count = 0
        mix = _BASE_MIX.copy()
        online = [MERCHANT_CATEGORIES.index(c) for c in ("online_retail", "electronics")]
        mix[online] *= spec.online_share / 0.35
        self.mix = mix / mix.sum()
        # intercept chosen so the mean fraud rate is close to spec.fraud_rate
        self._intercept = math.log(spec.fraud_rate / (1 - spec.fraud_rate)) - 1.6

    def _hot_weights(self, t: float) -> dict[str, float]:
        phase = (t / self.spec.drift_period_seconds) % len(_HOT)
        out = {}
        for i, c in enumerate(_HOT):
            d = min(abs(phase - i), len(_HOT) - abs(phase - i))
            out[c] = 2.2 * math.exp(-(d**2))
        return out

    def batch(self, n: int, t: float, now_ms: int = 0) -> list[dict[str, Any]]:
        """``n`` transactions at ``t`` seconds into the run (drift follows ``t``)."""
        rng, spec = self.rng, self.spec
        cat_idx = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=self.mix)
        cats = [MERCHANT_CATEGORIES[i] for i in cat_idx]
        mu = np.array([_AMOUNT[c][0] for c in cats])
        sd = np.array([_AMOUNT[c][1] for c in cats])
        amount = np.round(np.exp(rng.normal(mu, sd)), 2)
        night = rng.random(n) < spec.night_share
        hour = np.where(night, rng.integers(0, 6, n), rng.integers(6, 24, n))
        online = np.isin(cat_idx, [MERCHANT_CATEGORIES.index(c) for c in ("online_retail", "electronics")])
        card_present = ~online & (rng.random(n) < 0.93)
        distance = np.round(rng.lognormal(1.6, 1.1, n), 1)
        account_age = rng.integers(1, 4000, n)
        hot = self._hot_weights(t)
        hot_term = np.array([hot.get(c, 0.0) for c in cats])
        logit = (
            self._intercept
            + 0.9 * (np.log1p(amount) - 4.0)
            + 1.3 * night
            + 0.9 * ~card_present
            + 0.6 * (np.log1p(distance) - 1.8)
            - 0.5 * (np.log1p(account_age) - 6.5)
            + hot_term
        )
        fraud = rng.random(n) < 1 / (1 + np.exp(-logit))
        labelled = rng.random(n) < spec.label_fraction
        out = []
        for i in range(n):
            self.count += 1
            out.append(
                {
                    "transaction_id": f"{self.site_id}-{self.prefix}-{self.count}",
                    "site_id": self.site_id,
                    "event_time": now_ms,
                    "amount": float(amount[i]),
                    "merchant_category": cats[i],
                    "hour": int(hour[i]),
                    "card_present": bool(card_present[i]),
                    "distance_km": float(distance[i]),
                    "account_age_days": int(account_age[i]),
                    "is_fraud": bool(fraud[i]) if labelled[i] else None,
                }
            )
        return out
