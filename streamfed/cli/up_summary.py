"""What `streamfed up` says at the end: the run's summary, why it made no version, the report's history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamfed.cli.up_children import Child


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def summarize(
    children: list[Child], failed: list[str], seconds: float, bootstrap: str, run_dir: Path
) -> dict[str, Any]:
    agg = _read(run_dir / "aggregator.json") or {}
    sites: dict[str, Any] = {}
    for c in children:
        if c.kind == "site":
            r = _read(c.summary) or {}
            sites[c.name] = {
                "records": r.get("records", 0),
                "epsilon": r.get("epsilon", 0.0),
                "epsilon_per_record": r.get("epsilon_per_record", 0.0),
                "auc": r.get("auc"),
                "local_auc": r.get("local_auc"),
                "global_auc": r.get("global_auc"),
                "served_weight": r.get("served_weight"),
                "updates_published": r.get("updates_published", 0),
                "dead_letters": r.get("dead_letters", 0),
                "base_version": r.get("base_version", 0),
                "budget_exhausted": r.get("budget_exhausted", False),
            }
    transactions = sum((_read(c.summary) or {}).get("transactions", 0) for c in children if c.kind == "source")
    g_aucs = [s["global_auc"] for s in sites.values() if s["global_auc"] is not None]
    return {
        "seconds": round(seconds, 1),
        "bootstrap": bootstrap,
        "run_dir": str(run_dir),
        "model_versions": agg.get("versions", 0),
        "transactions": transactions,
        "updates_published": sum(s["updates_published"] for s in sites.values()),
        "updates_accepted": agg.get("accepted", 0),
        "updates_rejected": agg.get("rejected", 0),
        "updates_buffered": agg.get("buffered", 0),
        "rejected_reasons": agg.get("rejected_reasons", {}),
        "dead_letters": sum(s["dead_letters"] for s in sites.values()),
        "sites": sites,
        "global": {"version": agg.get("version", 0), "auc": sum(g_aucs) / len(g_aucs) if g_aucs else None},
        "failed": failed,
    }


# the scraped keys of a site's prequential AUCs, by what the report and the live table call them
AUC_KEYS = {
    "served": "streamfed_site_prequential_auc{predictor=served}",
    "personal": "streamfed_site_prequential_auc{predictor=local}",
    "global": "streamfed_site_prequential_auc{predictor=global}",
}


def record(h: dict[str, Any], samples: dict[str, float], t: float) -> None:
    """Append one scrape of a site to its report history (AUCs appear once a window is full)."""
    for name, key in AUC_KEYS.items():
        if key in samples:
            h.setdefault("auc", {}).setdefault(name, []).append((round(t, 1), samples[key]))
    if "streamfed_site_epsilon_spent" in samples:
        h.setdefault("epsilon", {}).setdefault("epsilon", []).append(
            (round(t, 1), samples["streamfed_site_epsilon_spent"])
        )


def explain(summary: dict[str, Any], topo: Any) -> list[str]:
    """Why a run made no version (or less than it should), from its own figures."""
    notes: list[str] = []
    if summary["failed"]:
        notes.append(f"failed: {', '.join(summary['failed'])} (their logs are in {summary['run_dir']}/logs)")
    if summary["model_versions"] > 0:
        return notes
    records = sum(s["records"] for s in summary["sites"].values())
    if "ready" not in summary.get("timeline_seconds", {}):
        notes.append("no version: the aggregator and sites never became ready, so no data was produced")
    elif summary["transactions"] == 0:
        notes.append("no version: the sources produced no records")
    elif records == 0:
        notes.append(f"no version: {summary['transactions']} records were produced but no site read any")
    elif summary["updates_published"] == 0:
        notes.append(
            f"no version: the sites read {records} records but published no update; a site publishes after "
            f"{topo.update.every_records} labelled records or {topo.update.every_seconds:g} s with at least "
            f"{topo.update.min_records} (update.*); run longer or lower them"
        )
    elif summary["updates_accepted"] == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in summary["rejected_reasons"].items()) or "none recorded"
        notes.append(
            f"no version: {summary['updates_published']} updates published, none accepted (rejected: {reasons})"
        )
    else:
        notes.append(
            f"no version: {summary['updates_accepted']} updates accepted, {summary['updates_buffered']} still "
            f"buffered; a version needs aggregation.buffer_size = {topo.aggregation.buffer_size}"
        )
    return notes
