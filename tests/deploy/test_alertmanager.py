"""Alertmanager's configuration: valid (amtool), and alerts routed by their severity."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.helpers import REPO, RULES_FILE

CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("amtool")
    if path is None:
        pytest.skip("amtool is not installed (apt-get install -y --no-install-recommends prometheus-alertmanager)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


def test_amtool_check_config() -> None:
    res = amtool("check-config", str(CONFIG))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", "oncall"), ("warning", "team"), ("info", "null"), ("", "null")]
)
def test_alerts_are_routed_by_severity(severity: str, receiver: str) -> None:
    labels = ["alertname=SiteSilent", "site=bank-north"] + ([f"severity={severity}"] if severity else [])
    res = amtool("config", "routes", "test", "--config.file", str(CONFIG), *labels)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == [receiver]


def test_every_severity_the_rules_use_has_a_route() -> None:
    rules = yaml.safe_load(RULES_FILE.read_text())
    used = {r["labels"]["severity"] for g in rules["groups"] for r in g["rules"]}
    routed = set()
    for route in yaml.safe_load(CONFIG.read_text())["route"]["routes"]:
        for m in route["matchers"]:
            name, _, value = m.partition("=")
            if name == "severity":
                routed.add(value.strip('"'))
    assert used <= routed
