"""An auditor's privacy report: per site and model version, what had been released and what it cost.

Epsilon is recomputed here from the ledger's releases with dp-accounting, by two accountants (RDP,
which the sites use, and PLD, which is tighter), at the topology's delta.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

from streamfed.privacy.accountant import SENSITIVITY_FACTOR, Release


@dataclass(frozen=True)
class ReportRow:
    version: int
    site: str
    releases: int
    last_sequence: int
    sigma: float
    clip_norm: float
    epsilon_rdp: float
    epsilon_pld: float
    epsilon_per_record_rdp: float
    delta: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _epsilon(by_sigma: Mapping[float, int], delta: float, method: str) -> float:
    if not by_sigma:
        return 0.0
    acc: dp_accounting.PrivacyAccountant = rdp.RdpAccountant() if method == "rdp" else pld.PLDAccountant()
    for sigma, n in sorted(by_sigma.items()):
        acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / SENSITIVITY_FACTOR), n))
    return float(acc.get_epsilon(delta))


def privacy_rows(
    ledgers: Mapping[str, list[Release]], versions: Iterable[Mapping[str, Any]], delta: float, k: int
) -> list[ReportRow]:
    """One row per (version, site that had released by then).

    A site's releases "by version v" are its ledger entries up to the highest sequence of that site
    included in any version <= v: everything it had published that the model could have seen.
    """
    rows: list[ReportRow] = []
    latest: dict[str, int] = {}
    for v in sorted(versions, key=lambda r: int(r["version"])):
        for c in v.get("contributions", []):
            latest[c["site_id"]] = max(latest.get(c["site_id"], 0), int(c["sequence"]))
        for site, last_seq in sorted(latest.items()):
            released = [r for r in ledgers.get(site, []) if r.sequence <= last_seq]
            if not released:
                continue
            by_sigma = Counter(r.sigma for r in released)
            worst = min(by_sigma)  # per record: k releases, conservatively at the smallest noise
            rows.append(
                ReportRow(
                    version=int(v["version"]),
                    site=site,
                    releases=len(released),
                    last_sequence=last_seq,
                    sigma=released[-1].sigma,
                    clip_norm=released[-1].clip_norm,
                    epsilon_rdp=_epsilon(by_sigma, delta, "rdp"),
                    epsilon_pld=_epsilon(by_sigma, delta, "pld"),
                    epsilon_per_record_rdp=_epsilon({worst: min(k, len(released))}, delta, "rdp"),
                    delta=delta,
                )
            )
    return rows
