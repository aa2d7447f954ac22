"""The provisioned Grafana dashboard: loads, shows the panels operators need, and queries only
metrics that StreamFed exports, through the provisioned Prometheus data source."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml

from tests.deploy.helpers import REPO, load_compose
from tests.deploy.metric_names import exported_metric_names, metric_names_in

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamfed.json"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in doc["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows hold their panels


def exprs(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for p in panels(doc):
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def test_dashboard_loads_with_unique_panel_ids_and_targets() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"]
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels(doc) if p["type"] != "row"]
    assert len(graphs) >= 12
    for p in graphs:
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"]


def test_every_panel_queries_only_metrics_streamfed_exports() -> None:
    exported = exported_metric_names()
    doc = dashboard()
    used: set[str] = set()
    for title, expr in exprs(doc):
        names = metric_names_in(expr)
        assert names <= exported, f"panel {title!r} queries {sorted(names - exported)}, not in streamfed.metrics"
        used |= names
    for var in (v for v in doc["templating"]["list"] if v["type"] == "query"):
        names = metric_names_in(var["definition"])
        assert names and names <= exported, var["name"]
    # the panels the operations guide describes
    assert {
        "streamfed_site_records_total",
        "streamfed_site_consumer_lag_records",
        "streamfed_site_epsilon_spent",
        "streamfed_site_budget_remaining",
        "streamfed_site_prequential_auc",
        "streamfed_aggregator_versions_total",
        "streamfed_aggregator_staleness",
        "streamfed_update_to_version_seconds",
        "streamfed_aggregator_updates_rejected_total",
        "streamfed_gpu_step_seconds",
        "streamfed_site_dead_letters_total",
        "streamfed_site_drift_detected_total",
    } <= used


def test_auc_is_shown_for_the_local_and_the_global_model_and_histograms_by_bucket() -> None:
    all_exprs = [e for _, e in exprs(dashboard())]
    auc = [e for e in all_exprs if "streamfed_site_prequential_auc" in e]
    assert any('predictor="local"' in e for e in auc) and any('predictor="global"' in e for e in auc)
    for hist in ("streamfed_aggregator_staleness", "streamfed_update_to_version_seconds", "streamfed_gpu_step_seconds"):
        uses = [e for e in all_exprs if hist in e]
        assert uses and all(f"{hist}_bucket" in e for e in uses), hist
        assert any("histogram_quantile" in e for e in uses), hist


def test_provisioning_points_at_the_compose_prometheus_and_dashboard_folder() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    # every query goes through the dashboard's data-source variable, so the dashboard imports into
    # another Grafana without edits; the provisioned source is the default, so here it picks that one
    assert source["isDefault"] is True
    doc = dashboard()
    (var,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert var["name"] == "datasource" and var["query"] == "prometheus"
    uids = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if isinstance(x.get("datasource"), dict):
                uids.add(x["datasource"].get("uid"))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    assert uids - {"-- Grafana --"} == {"${datasource}"}  # the built-in annotation source aside
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "streamfed.yml").read_text())
    (provider,) = providers["providers"]
    grafana = load_compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert (REPO / mounts[provider["options"]["path"]] / DASHBOARD.name).exists()
