"""A serving app outside the federation (examples/serving_app.py) follows versions while the loop
runs, hot-swaps them and scores live records; `streamfed models watch` prints the same versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from streamfed.kafka.topics import provision_topology
from streamfed.registry import read_topic
from streamfed.registry.reader import read_latest
from streamfed.serde.avro import AvroCodec
from streamfed.serving import Scorer
from streamfed.sources import TransactionSimulator
from tests.integration.helpers import start, tail

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.kafka


def test_a_serving_app_follows_versions_and_scores_live_records(
    topology_factory, bootstrap: str, tmp_path: Path
) -> None:
    path, topo = topology_factory("fraud", {"update": {"every_seconds": 1.0, "min_records": 50}})
    provision_topology(topo)  # the app and the watcher start with the loop: the topics exist already
    state, logs = tmp_path / "state", tmp_path / "logs"
    up_args = ["up", str(path), "--duration", "60", "--bootstrap", bootstrap, "--no-live", "--state-dir", str(state)]
    up = start(up_args, logs / "up.log", tmp_path)
    watch_args = ["models", "watch", "--topology", str(path), "--json", "--count", "4", "--duration", "170"]
    watch = start(watch_args, logs / "watch.log", tmp_path)
    app_cmd = [sys.executable, str(EXAMPLES / "serving_app.py"), "--topology", str(path), "--json"]
    with open(logs / "app.out", "w") as out, open(logs / "app.err", "w") as err:
        app = subprocess.Popen([*app_cmd, "--site", topo.sites[1].id], stdout=out, stderr=err)
        try:
            assert up.wait(180) == 0, tail(logs / "up.log")
            app.terminate()  # a serving app runs until stopped; it prints its last line and exits 0
            app.wait(60)
            watch.wait(60)
        finally:
            for p in (up, app, watch):
                if p.poll() is None:
                    p.kill()
    app_out = (logs / "app.out").read_text()
    watch_out = (logs / "watch.log").read_text()
    assert app.returncode == 0, tail(logs / "app.err")
    rows = [json.loads(line) for line in app_out.splitlines() if line.startswith("{")]
    versions = [r["version"] for r in rows if r["version"] is not None]
    assert versions and versions == sorted(versions), versions  # hot-swapped forward, never back
    assert versions[-1] > versions[0], f"the app never swapped to a newer version: {versions}"
    assert rows[-1]["scored"] > 200 and rows[-1]["refused"] == 0
    assert rows[-1]["auc"] is not None and rows[-1]["auc"] > 0.6, rows[-1]  # useful on the live stream

    assert watch.returncode == 0, tail(logs / "watch.log")
    seen = [json.loads(line) for line in watch_out.splitlines() if line.startswith("{")]
    assert len(seen) == 4 and [s["version"] for s in seen] == sorted({s["version"] for s in seen})
    committed = {
        r["version"]: r["params_sha256"]
        for _, r in read_topic(topo.kafka, topo.models_topic, AvroCodec("model_version"))
        if isinstance(r, dict)
    }
    assert all(committed.get(s["version"]) == s["params_sha256"] for s in seen)

    # The last version, from its record alone, scores a site's fresh records usefully.
    last = read_latest(topo.kafka, topo.models_topic, AvroCodec("model_version"), key=topo.model.name)
    assert last is not None and last["version"] >= 5
    site = topo.sites[1]
    assert site.simulator is not None
    fresh = TransactionSimulator(site.id, site.simulator).batch(5000, t=40.0)
    p, status = Scorer.from_record(last).score(fresh)
    assert all(s is True for s in status)
    y = np.array([bool(r[topo.model.label]) for r in fresh])
    auc = mannwhitneyu(p[y], p[~y]).statistic / (y.sum() * (~y).sum())  # the rank (ROC) AUC
    assert auc > 0.7, f"version {last['version']} scores AUC {auc:.3f} on fresh {site.id} records"
