"""`streamfed up`, bounded, on a real broker: versions appear and lineage covers each update once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import cli, read_json
from tests.integration.lineage import check_lineage, read_lineage

pytestmark = pytest.mark.kafka


def test_bounded_up_gives_versions_whose_lineage_covers_each_accepted_update_once(
    topology_factory, bootstrap: str, tmp_path: Path, real_kafka: bool
) -> None:
    path, topo = topology_factory("fraud")
    summary_file = tmp_path / "summary.json"
    res = subprocess.run(
        cli(
            "up",
            str(path),
            "--duration",
            "30",
            "--bootstrap",
            bootstrap,
            "--no-live",
            "--summary-json",
            str(summary_file),
            "--state-dir",
            str(tmp_path / "state"),
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = read_json(summary_file)
    for key in (
        "model_versions",
        "transactions",
        "updates_published",
        "updates_accepted",
        "updates_rejected",
        "dead_letters",
        "sites",
        "global",
    ):
        assert key in s
    assert s["failed"] == []
    assert s["model_versions"] >= 3
    assert s["transactions"] > 1000
    assert s["dead_letters"] == 0 and s["updates_rejected"] == 0
    assert set(s["sites"]) == {site.id for site in topo.sites}
    for site in s["sites"].values():
        assert site["records"] > 0 and site["epsilon"] > 0 and site["auc"] is not None
    assert s["global"]["version"] == s["model_versions"]

    pairs = check_lineage(read_lineage(topo), real_kafka)
    assert len(pairs) == s["updates_accepted"] - s["updates_buffered"]
    published = {sid: site["updates_published"] for sid, site in s["sites"].items()}
    for sid, seq in pairs:
        assert 1 <= seq <= published[sid], f"{sid}#{seq} was never published"
    assert s["updates_published"] >= s["updates_accepted"]


def test_models_cli_lists_shows_and_exports_versions(topology_factory, bootstrap: str, tmp_path: Path) -> None:
    """After a bounded run: list, show (lineage and DP summary) and export a loadable model."""
    import json

    import numpy as np

    from streamfed.learners.federated import build_federated_model, sigmoid
    from streamfed.registry.export import load_exported

    path, topo = topology_factory("fraud", {"update": {"every_seconds": 1.0, "min_records": 50}})
    state = tmp_path / "state"
    res = subprocess.run(
        cli("up", str(path), "--duration", "35", "--bootstrap", bootstrap, "--no-live", "--state-dir", str(state)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    base = ["--topology", str(path), "--bootstrap", bootstrap, "--state-dir", str(state)]
    listed = subprocess.run(cli("models", "list", *base, "--json"), capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["version"] for r in rows] == list(range(rows[0]["version"], rows[-1]["version"] + 1))
    assert rows[0]["version"] == 0 and rows[-1]["version"] >= 1
    cached = subprocess.run(
        cli("models", "list", *base, "--json", "--from-cache"), capture_output=True, text=True, timeout=60
    )
    assert [r["version"] for r in json.loads(cached.stdout)] == [r["version"] for r in rows[1:]]

    shown = subprocess.run(cli("models", "show", *base), capture_output=True, text=True, timeout=60)
    doc = json.loads(shown.stdout)
    assert doc["version"] == rows[-1]["version"]
    assert doc["contributions"] and set(doc["dp"]["site_epsilon_spent"]) <= {s.id for s in topo.sites}
    assert doc["feature_order"] == topo.model.features.names()

    out = tmp_path / "model.npz"
    exported = subprocess.run(cli("models", "export", str(out), *base), capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    params, meta = load_exported(out)
    assert meta["version"] == doc["version"]
    model = build_federated_model(topo.model, device="cpu")
    X = np.zeros((4, len(topo.model.features.names())), dtype=np.float32)
    p = sigmoid(model.logits(params, X))
    assert p.shape == (4,) and np.all((p >= 0) & (p <= 1))
    with np.load(out) as z:
        assert z["linear.weights"].shape == (len(topo.model.features.names()),)
