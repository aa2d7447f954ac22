"""docker-compose.yml: valid against the Compose Specification, consistent with the Prometheus
config, and every streamfed service's command runnable by hand on the embedded broker (no Docker
engine runs on the development machines, see DESIGN.md section 8)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from streamfed.broker import EmbeddedBroker
from streamfed.topology import load_topology
from tests.deploy.helpers import (
    COMPOSE_FILE,
    PROMETHEUS_DIR,
    REPO,
    bind_mounts,
    command_of,
    healthcheck_argv,
    http_get,
    is_one_shot,
    kill_all,
    load_compose,
    localize,
    logs_of,
    names,
    option,
    run_env,
    scrape,
    start,
    stop,
    streamfed_commands,
    streamfed_services,
    tail,
    wait_for,
)

SITES = ("bank-north", "bank-south", "bank-east")
EXPECTED_METRICS = {
    "aggregator": {
        "streamfed_aggregator_model_version",
        "streamfed_aggregator_versions_total",
        "streamfed_aggregator_updates_accepted_total",
        "streamfed_update_to_version_seconds_bucket",
    },
    "site": {
        "streamfed_site_records_total",
        "streamfed_site_labelled_records_total",
        "streamfed_site_epsilon_spent",
        "streamfed_site_budget_exhausted",
        "streamfed_site_prequential_auc",
        "streamfed_site_updates_published_total",
        "streamfed_site_base_version",
    },
    "simulate": {"streamfed_source_records_produced_total"},
}


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_validates_against_the_compose_spec() -> None:
    res = _check_jsonschema(COMPOSE_FILE)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_compose_spec_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator is not a no-op: an unknown service key and a bad restart type fail it."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    doc["services"]["aggregator"]["restarts"] = "always"
    doc["services"]["kafka"]["healthcheck"]["retries"] = "many"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    res = _check_jsonschema(broken)
    assert res.returncode != 0, res.stdout + res.stderr


def test_compose_services_have_pinned_images_restart_policies_health_checks_and_conditions() -> None:
    compose = load_compose()
    services = compose["services"]
    ours = streamfed_services(compose)
    assert {"kafka", "topic-init", "keys", "aggregator", "simulator", "prometheus", "alertmanager", "grafana"} <= set(
        services
    )
    assert {f"site-{s}" for s in SITES} <= set(services)
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        assert image, f"{name} has no image"
        if name not in ours:
            tag = image.rpartition(":")[2]
            assert ":" in image and tag not in ("", "latest"), f"{name}: pin the image tag ({image})"
        if is_one_shot(svc):
            assert name in ("topic-init", "keys"), f"{name} is long-running: restart unless-stopped"
            assert "healthcheck" not in svc
        else:
            assert svc.get("restart") == "unless-stopped", f"{name}: restart policy {svc.get('restart')}"
            assert "healthcheck" in svc, f"{name} has no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond.get("condition") in ("service_started", "service_healthy", "service_completed_successfully")
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no check"
            if cond["condition"] == "service_completed_successfully":
                assert is_one_shot(services[dep])
        for container, host in bind_mounts(svc).items():
            assert host.exists(), f"{name} mounts {host} at {container}; it is not in the repository"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # Kafka refuses consumers whose session timeout is below the broker's minimum
    topology = ours["aggregator"]["command"][ours["aggregator"]["command"].index("-t") + 1]
    session_ms = load_topology(topology).kafka.consumer_settings.get("session.timeout.ms")
    if session_ms is not None:
        assert int(kafka_env.get("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", 6000)) <= int(session_ms)
    # every service that talks to Kafka waits for the topics (and through them for a healthy broker)
    for name, svc in ours.items():
        args = command_of(svc)
        if "--bootstrap" in args:
            assert name == "topic-init" or "topic-init" in svc.get("depends_on", {}), name
    # the services needing keys share the keys job's volume
    keys_volume = ours["keys"]["volumes"]
    for name, svc in ours.items():
        if "--state-dir" in command_of(svc):
            assert svc["volumes"] == keys_volume, name
            if name != "keys":
                assert svc["depends_on"]["keys"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_every_streamfed_service_on_its_metrics_port() -> None:
    ours = streamfed_services(load_compose())
    expected = {
        f"{name}:{option(command_of(svc), '--metrics-port')}"
        for name, svc in ours.items()
        if option(command_of(svc), "--metrics-port")
    }
    cfg = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    scraped: dict[str, dict[str, str]] = {}
    for job in cfg["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                scraped[t] = {"job": job["job_name"], **sc.get("labels", {})}
    assert expected == {t for t in scraped if t.split(":")[0] in ours}
    assert len(expected) == 5
    for name, svc in ours.items():
        args = command_of(svc)
        port = option(args, "--metrics-port")
        if port is None:
            continue
        labels = scraped[f"{name}:{port}"]
        assert labels["topology"] == option(args, "-t")
        if args[0] == "site":
            assert labels["job"] == "streamfed-site" and labels["site"] == option(args, "--site")
        # the health check fetches the same /metrics
        assert f":{port}/metrics" in " ".join(svc["healthcheck"]["test"])
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def _wait_metrics(port: int, expected: set[str], proc: subprocess.Popen[bytes], what: str) -> dict[str, float]:
    def check() -> dict[str, float] | None:
        assert proc.poll() is None, f"{what} exited with code {proc.returncode}"
        got = scrape(port)
        return got if expected <= names(got) else None

    return wait_for(check, 180, f"{what} to export {sorted(expected)}")


@pytest.mark.kafka
@pytest.mark.timeout(900)  # every wait inside is bounded; this only keeps pytest-timeout's 300 s out of the way
def test_every_streamfed_service_command_runs_by_hand_on_the_embedded_broker(tmp_path: Path) -> None:
    compose = load_compose()
    ours = streamfed_commands(compose)
    state, logs = tmp_path / "state", tmp_path / "logs"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as broker:
        try:
            # one-shot jobs, in dependency order, to completion
            for name in ("topic-init", "keys"):
                cmd = localize(name, ours[name], broker.bootstrap, state)
                res = subprocess.run(cmd.argv, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=180)
                assert res.returncode == 0, f"{name}: {cmd.argv}\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
            for site in SITES:
                assert (state / "fraud" / "keys" / f"{site}.key").exists()
            # the long-running services
            cmds = {n: localize(n, s, broker.bootstrap, state) for n, s in ours.items() if not is_one_shot(s)}
            assert set(cmds) == {"aggregator", "simulator", *(f"site-{s}" for s in SITES)}
            for name, cmd in cmds.items():
                procs[name] = start(cmd, logs, tmp_path)
            for name, cmd in cmds.items():
                assert cmd.port is not None, f"{name} serves no /metrics"
                role = command_of(ours[name])[0]
                _wait_metrics(cmd.port, EXPECTED_METRICS[role], procs[name], name)
                hc = subprocess.run(healthcheck_argv(ours[name], cmd.ports), capture_output=True, text=True, timeout=30)
                assert hc.returncode == 0, f"{name}'s health check fails: {hc.stderr[-1000:]}"
            # the loop closes: the aggregator commits a version from the sites' updates
            agg_port = cmds["aggregator"].port
            assert agg_port is not None
            wait_for(
                lambda: any(
                    k.startswith("streamfed_aggregator_model_version{") and v >= 1 for k, v in scrape(agg_port).items()
                ),
                180,
                "streamfed_aggregator_model_version >= 1",
            )
            from streamfed.registry import read_topic
            from streamfed.serde.avro import AvroCodec

            topo = load_topology("fraud", {"kafka": {"bootstrap_servers": broker.bootstrap}})
            versions = [r for _, r in read_topic(topo.kafka, topo.models_topic, AvroCodec("model_version"))]
            assert any(isinstance(r, dict) and r["version"] >= 1 for r in versions)
            # SIGTERM stops each service cleanly
            codes = {name: stop(p) for name, p in procs.items()}
            assert codes == dict.fromkeys(procs, 0), codes
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs_of(logs)}") from exc
        finally:
            kill_all(procs.values())


def test_alert_log_receiver_runs_by_hand_and_prints_notifications(tmp_path: Path) -> None:
    svc = load_compose()["services"]["alert-log"]
    cmd = localize("alert-log", svc, "unused", tmp_path)
    assert cmd.port is not None
    # Alertmanager posts to the port the receiver listens on
    am = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    urls = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and all(re.match(rf"http://alert-log:{next(iter(cmd.ports))}/", u) for u in urls), urls
    proc = start(cmd, tmp_path / "logs", tmp_path)
    log = tmp_path / "logs" / "alert-log.log"
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{cmd.port}/"), 60, "alert-log to listen")
        hc = subprocess.run(healthcheck_argv(svc, cmd.ports), capture_output=True, text=True, timeout=30)
        assert hc.returncode == 0, hc.stderr
        body = {
            "receiver": "oncall",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "SiteSilent", "severity": "critical", "site": "bank-east"},
                    "annotations": {"summary": "Site bank-east is silent"},
                    "startsAt": "2025-01-01T00:00:00Z",
                }
            ],
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{cmd.port}/oncall",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

        def printed() -> dict[str, str] | None:
            for line in log.read_text().splitlines():
                if line.startswith("{"):
                    return dict(json.loads(line))
            return None

        line = wait_for(printed, 30, "the notification in alert-log's output")
        assert line["alertname"] == "SiteSilent" and line["site"] == "bank-east" and line["receiver"] == "oncall"
        assert stop(proc, 30) == 0
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{tail(log)}") from exc
    finally:
        kill_all([proc])
