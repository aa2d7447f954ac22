"""The alert rules against a live deployment: a real Prometheus scrapes the compose file's services
(run by hand on an embedded broker) and evaluates the project's rules with test-sized windows;
a tiny privacy budget and a stopped site must show up as firing alerts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamfed.broker import EmbeddedBroker
from streamfed.broker.embedded import free_port
from streamfed.topology.loader import resolve_topology_path
from tests.deploy.helpers import (
    PROMETHEUS_DIR,
    RULES_FILE,
    LocalCommand,
    http_get,
    is_one_shot,
    kill_all,
    load_compose,
    localize,
    logs_of,
    run_env,
    start,
    stop,
    streamfed_commands,
    wait_for,
)

pytestmark = pytest.mark.kafka

STOPPED_SITE = "bank-east"
SITES = ("bank-north", "bank-south", "bank-east")
WINDOW = "20s"


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if path is None:
        pytest.skip("prometheus is not installed (apt-get install -y --no-install-recommends prometheus)")
    return path


def fast_rules(doc: dict[str, Any]) -> dict[str, Any]:
    """The project's rules with `for:` 1 s and every range and offset 10 s, expressions otherwise unchanged."""
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
            expr = re.sub(r"\[\d+[smhdwy]\]", f"[{WINDOW}]", rule["expr"])
            rule["expr"] = re.sub(r"\boffset \d+[smhdwy]\b", f"offset {WINDOW}", expr)
    return doc


def prometheus_config(cmds: dict[str, LocalCommand]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with 1 s intervals, no Alertmanager, and each compose target
    (service:port) replaced by the local port its command was given."""
    cfg = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    cfg.pop("alerting", None)
    jobs = []
    for job in cfg["scrape_configs"]:
        for sc in job.get("static_configs", []):
            local = []
            for target in sc["targets"]:
                host, _, port = target.partition(":")
                if host in cmds:
                    local.append(f"127.0.0.1:{cmds[host].ports[int(port)]}")
            sc["targets"] = local
        job["static_configs"] = [sc for sc in job.get("static_configs", []) if sc["targets"]]
        if job["static_configs"]:
            jobs.append(job)
    cfg["scrape_configs"] = jobs
    return cfg


@pytest.mark.timeout(900)  # every wait inside is bounded; this only keeps pytest-timeout's 300 s out of the way
def test_tiny_budget_and_a_stopped_site_fire_their_alerts(tmp_path: Path) -> None:
    prom_bin = prometheus_binary()
    compose = load_compose()
    ours = streamfed_commands(compose)
    state, logs, prom_dir = tmp_path / "state", tmp_path / "logs", tmp_path / "prometheus"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as broker:
        # the shipped topology with a lifetime budget that three releases exceed, and fast updates
        topo = yaml.safe_load(resolve_topology_path("fraud").read_text())
        topo["privacy"]["budget_epsilon"] = 10.0
        topo["update"] = {**topo["update"], "every_seconds": 1.0, "min_records": 50}
        topo["kafka"]["bootstrap_servers"] = broker.bootstrap
        topo["state_dir"] = str(state)
        topo_file = tmp_path / "fraud.yaml"
        topo_file.write_text(yaml.safe_dump(topo, sort_keys=False))

        cmds = {n: localize(n, s, broker.bootstrap, state, str(topo_file)) for n, s in ours.items()}
        try:
            for name in ("topic-init", "keys"):
                res = subprocess.run(
                    cmds[name].argv, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=180
                )
                assert res.returncode == 0, f"{name}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
            services = {n: c for n, c in cmds.items() if not is_one_shot(ours[n])}
            for name, cmd in services.items():
                procs[name] = start(cmd, logs, tmp_path)

            (prom_dir / "rules").mkdir(parents=True)
            (prom_dir / "rules" / RULES_FILE.name).write_text(
                yaml.safe_dump(fast_rules(yaml.safe_load(RULES_FILE.read_text())), sort_keys=False)
            )
            (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(services), sort_keys=False))
            port = free_port()
            api = f"http://127.0.0.1:{port}"
            procs["prometheus"] = subprocess.Popen(
                [
                    prom_bin,
                    f"--config.file={prom_dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={prom_dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=open(logs / "prometheus.log", "ab"),  # noqa: SIM115 - the child owns it
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )

            def get(path: str) -> Any:
                assert procs["prometheus"].poll() is None, "prometheus exited"
                text = http_get(api + path)
                return json.loads(text)["data"] if text else None

            def targets_up() -> bool:
                data = get("/api/v1/targets")
                active = data["activeTargets"] if data else []
                return len(active) == len(services) and all(t["health"] == "up" for t in active)

            wait_for(targets_up, 180, f"prometheus to scrape all {len(services)} services")

            def firing(alertname: str) -> set[str]:
                data = get("/api/v1/alerts") or {"alerts": []}
                return {
                    a["labels"].get("site", "")
                    for a in data["alerts"]
                    if a["labels"]["alertname"] == alertname and a["state"] == "firing"
                }

            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited with code {proc.returncode}"
            wait_for(lambda: firing("PrivacyBudgetExhausted") >= set(SITES), 180, "budget alerts for every site")

            assert STOPPED_SITE not in firing("SiteSilent")
            assert stop(procs[f"site-{STOPPED_SITE}"]) == 0
            wait_for(lambda: STOPPED_SITE in firing("SiteSilent"), 120, f"SiteSilent for {STOPPED_SITE}")
            # both at once: the running sites are still out of budget
            assert firing("PrivacyBudgetExhausted") >= set(SITES) - {STOPPED_SITE}
            assert STOPPED_SITE in firing("SiteSilent")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs_of(logs)}") from exc
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    stop(proc, 30)
            kill_all(procs.values())
