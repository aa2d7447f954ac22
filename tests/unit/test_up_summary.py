"""What `streamfed up` reads from its processes and says at the end: scraped keys, readiness, why a
run made no version, and the HTML report's charts."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streamfed.broker.embedded import free_port
from streamfed.cli.up_children import Child
from streamfed.cli.up_summary import explain, record
from streamfed.report import line_chart, run_report
from streamfed.topology import load_topology


def test_scrape_keys_drop_topology_and_site_labels_and_readiness_follows_the_gauge(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    records = Counter("streamfed_site_records_total", "r", ["topology", "site"], registry=reg)
    auc = Gauge("streamfed_site_prequential_auc", "a", ["topology", "site", "predictor"], registry=reg)
    ready = Gauge("streamfed_process_ready", "r", ["topology", "component", "site"], registry=reg)
    port = free_port()
    server, _ = start_http_server(port, registry=reg)
    try:
        child = Child("a", "site", [], tmp_path / "log", tmp_path / "s.json", port)
        records.labels(topology="t", site="a").inc(7)
        auc.labels(topology="t", site="a", predictor="served").set(0.8)
        s = child.scrape()
        assert s["streamfed_site_records_total"] == 7  # no "{}" left when every label is dropped
        assert s["streamfed_site_prequential_auc{predictor=served}"] == 0.8
        assert not child.ready
        ready.labels(topology="t", component="site", site="a").set(1)
        child.scrape()
        assert child.ready
    finally:
        server.shutdown()


def _summary(**over: Any) -> dict[str, Any]:
    site = {"records": 0, "auc": None, "local_auc": None, "global_auc": None, "epsilon": 0.0,
            "epsilon_per_record": 0.0, "updates_published": 0}  # fmt: skip
    base = {"failed": [], "model_versions": 0, "transactions": 0, "updates_published": 0, "updates_accepted": 0,
            "updates_buffered": 0, "rejected_reasons": {}, "run_dir": "r", "sites": {"a": dict(site)},
            "timeline_seconds": {"ready": 3.0}}  # fmt: skip
    base.update(over)
    return base


def test_a_run_without_a_version_says_why() -> None:
    topo = load_topology("heart")
    assert "never became ready" in explain(_summary(timeline_seconds={}), topo)[0]
    assert "produced no records" in explain(_summary(), topo)[0]
    assert "no site read any" in explain(_summary(transactions=10), topo)[0]
    site = {"records": 12, "auc": None, "local_auc": None, "global_auc": None, "epsilon": 0.0,
            "epsilon_per_record": 0.0, "updates_published": 0}  # fmt: skip
    note = explain(_summary(transactions=12, sites={"a": site}), topo)[0]
    assert "published no update" in note and "after 20 labelled records" in note and "at least 5" in note
    note = explain(_summary(transactions=50, sites={"a": {**site, "records": 50}}, updates_published=2,
                            rejected_reasons={"stale": 2}), topo)[0]  # fmt: skip
    assert "none accepted (rejected: stale 2)" in note
    assert explain(_summary(model_versions=3, failed=["a"]), topo) == ["failed: a (their logs are in r/logs)"]
    assert explain(_summary(model_versions=3), topo) == []


def test_the_report_draws_each_site_s_auc_and_epsilon() -> None:
    h: dict[str, Any] = {}
    for t in range(5):
        record(
            h, {"streamfed_site_prequential_auc{predictor=served}": 0.5 + t / 10, "streamfed_site_epsilon_spent": t}, t
        )
    assert h["auc"]["served"][-1] == (4, 0.9) and len(h["epsilon"]["epsilon"]) == 5
    page = run_report(_summary(model_versions=2), {"a": h}, "run")
    charts = [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, re.S)]
    assert len(charts) == 2
    ns = "{http://www.w3.org/2000/svg}"
    assert len(charts[0].findall(f"{ns}polyline")) == 1 and len(charts[1].findall(f"{ns}polyline")) == 1
    assert "no data yet" in line_chart({}, "empty")
