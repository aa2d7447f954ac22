"""An auditor's privacy report: per site and model version, what had been released and what it cost.

Epsilon is recomputed here from the ledger's releases (each with the mechanism it applied) with
dp-accounting, by two accountants (RDP, which the sites use for their lifetime figure, and PLD,
usually tighter), at the topology's delta and under zero-out adjacency. Two figures per row: the
site's lifetime loss (a record that reached every release so far) and the per-record guarantee
(the ``k`` costliest releases, ``k`` being the releases one record can reach).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from streamfed.privacy.accountant import Release, releases_epsilon
from streamfed.privacy.signing import sequence_space


@dataclass(frozen=True)
class ReportRow:
    version: int
    site: str
    releases: int
    last_sequence: int
    mechanism: str
    sigma: float
    clip_norm: float
    steps: int
    sampling_rate: float
    epsilon_rdp: float
    epsilon_pld: float
    epsilon_per_record_rdp: float
    epsilon_per_record_pld: float
    delta: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _costliest(releases: list[Release], k: int) -> list[Release]:
    """The ``k`` releases that cost one record most: least noise, then most steps, highest rate."""
    return sorted(releases, key=lambda r: (r.sigma, -r.steps, -r.sampling_rate))[:k]


def privacy_rows(
    ledgers: Mapping[str, list[Release]], versions: Iterable[Mapping[str, Any]], delta: float, k: int
) -> list[ReportRow]:
    """One row per (version, site that had released by then).

    A site's releases "by version v" are its ledger entries up to the highest sequence of that site
    included in any version <= v: everything it had published that the model could have seen.
    ``ledgers`` and the rows are keyed by sequence space: the site, or ``site/worker`` for each
    worker of a site run as several processes (each worker reads records no other one reads, so a
    record's guarantee is its worker's).
    """
    rows: list[ReportRow] = []
    latest: dict[str, int] = {}
    cache: dict[tuple[str, int], tuple[float, float, float, float]] = {}
    for v in sorted(versions, key=lambda r: int(r["version"])):
        for c in v.get("contributions", []):
            space = sequence_space(c["site_id"], c.get("worker") or "")
            latest[space] = max(latest.get(space, 0), int(c["sequence"]))
        for site, last_seq in sorted(latest.items()):
            released = [r for r in ledgers.get(site, []) if r.sequence <= last_seq]
            if not released:
                continue
            key = (site, len(released))
            if key not in cache:
                worst = _costliest(released, k)
                cache[key] = (
                    releases_epsilon(released, delta, "rdp"),
                    releases_epsilon(released, delta, "pld"),
                    releases_epsilon(worst, delta, "rdp"),
                    releases_epsilon(worst, delta, "pld"),
                )
            e_rdp, e_pld, r_rdp, r_pld = cache[key]
            last = released[-1]
            rows.append(
                ReportRow(
                    version=int(v["version"]),
                    site=site,
                    releases=len(released),
                    last_sequence=last_seq,
                    mechanism=last.mechanism,
                    sigma=last.sigma,
                    clip_norm=last.clip_norm,
                    steps=last.steps,
                    sampling_rate=last.sampling_rate,
                    epsilon_rdp=e_rdp,
                    epsilon_pld=e_pld,
                    epsilon_per_record_rdp=r_rdp,
                    epsilon_per_record_pld=r_pld,
                    delta=delta,
                )
            )
    return rows
