"""The alert rules: promtool check and unit tests, every alert covered by a firing and a non-firing
case (checked by mutating each alert), and only metrics that StreamFed exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamfed.topology.loader import REPO_ROOT
from tests.deploy.helpers import PROMETHEUS_DIR, RULES_FILE
from tests.deploy.metric_names import exported_metric_names, metric_names_in

TESTS_DIR = PROMETHEUS_DIR / "tests"
REQUIRED_ALERTS = {
    "SiteUpdatesDropped",
    "SiteUpdatesPending",
    "SiteProducerRebuilds",
    "PrivacyBudgetNearExhaustion",
    "PrivacyBudgetExhausted",
    "SiteSilent",
    "ConsumerLagGrowing",
    "NoNewModelVersion",
    "PrequentialQualityDrop",
    "DriftDetected",
    "UpdateRejectionSpike",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install -y --no-install-recommends prometheus)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def alerts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def rules_doc() -> dict[str, Any]:
    return dict(yaml.safe_load(RULES_FILE.read_text()))


def test_promtool_check_rules() -> None:
    res = run_promtool("check", "rules", str(RULES_FILE))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_check_config_with_the_rules() -> None:
    res = run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rule files found" in res.stdout


def test_promtool_test_rules() -> None:
    files = sorted(TESTS_DIR.glob("*.yml"))
    assert files
    res = run_promtool("test", "rules", *map(str, files))
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_required_alerts_exist_with_severity_and_annotations_naming_the_site() -> None:
    doc = rules_doc()
    got = {a["alert"]: a for a in alerts(doc)}
    assert set(got) >= REQUIRED_ALERTS
    site_groups = {"streamfed-privacy", "streamfed-sites"}
    for group in doc["groups"]:
        for a in group["rules"]:
            assert a["labels"]["severity"] in ("critical", "warning", "info"), a["alert"]
            assert {"summary", "description"} <= set(a["annotations"]), a["alert"]
            if group["name"] in site_groups:
                assert "$labels.site" in a["annotations"]["summary"], a["alert"]


def test_every_alert_links_its_runbook_row_in_the_operations_doc() -> None:
    doc = (REPO_ROOT / "docs" / "operations.md").read_text()
    for a in alerts(rules_doc()):
        url = a["annotations"].get("runbook_url", "")
        assert url == f"docs/operations.md#alert-{a['alert'].lower()}", a["alert"]
        row = f'| <a id="alert-{a["alert"].lower()}"></a>`{a["alert"]}` | {a["labels"]["severity"]} |'
        assert row in doc, f"docs/operations.md has no row {row!r}"


def test_every_alert_has_a_firing_and_a_non_firing_case() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for f in TESTS_DIR.glob("*.yml"):
        for case in yaml.safe_load(f.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in alerts(rules_doc())}
    assert names - firing == set(), "alerts without a firing case"
    assert names - silent == set(), "alerts without a non-firing case"


def _mutant_fails(tmp_path: Path, alert: str, mutate: str) -> subprocess.CompletedProcess[str]:
    doc = rules_doc()
    for rule in alerts(doc):
        if rule["alert"] == alert:
            rule["expr"] = "vector(1) == 0" if mutate == "never" else f"({rule['expr']}) or vector(1)"
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / RULES_FILE.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    tests = tmp_path / "tests"
    if not tests.exists():
        shutil.copytree(TESTS_DIR, tests)
    return run_promtool("test", "rules", *map(str, sorted(tests.glob("*.yml"))))


@pytest.mark.parametrize("alert", sorted(a["alert"] for a in alerts(rules_doc())))
def test_the_unit_tests_catch_an_alert_that_never_or_always_fires(tmp_path: Path, alert: str) -> None:
    never = _mutant_fails(tmp_path, alert, "never")
    assert never.returncode != 0, f"no promtool case notices {alert} never firing"
    assert alert in never.stdout + never.stderr
    always = _mutant_fails(tmp_path, alert, "always")
    assert always.returncode != 0, f"no promtool case notices {alert} firing when it should not"


def test_rules_use_only_metrics_that_streamfed_exports() -> None:
    exported = exported_metric_names()
    for a in alerts(rules_doc()):
        used = metric_names_in(a["expr"])
        assert used or 'up{job="streamfed-' in a["expr"], f"{a['alert']} uses no streamfed metric or target"
        assert used <= exported, f"{a['alert']} uses {sorted(used - exported)}, not in streamfed.metrics"
