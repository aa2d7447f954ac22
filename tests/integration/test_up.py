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
