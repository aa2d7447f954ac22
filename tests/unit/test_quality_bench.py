"""The quality and rounds benchmarks run in their --quick modes and print what the README reads.

Structure only: the figures are measured by the full runs (benchmarks/README.md), not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamfed.topology.loader import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks"
DATA = REPO_ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")


def _run(script: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_quality_quick(tmp_path: Path) -> None:
    stdout, result = _run("quality.py", tmp_path, "--report", str(tmp_path / "quality.html"))
    page = (tmp_path / "quality.html").read_text()
    sites = [s for r in result["results"] for s in r["sites"]]
    # per site: an AUC chart for each of the two epsilons and one of epsilon over the stream
    assert page.count("<svg") == 3 * len(sites) and "no data yet" not in page
    assert all(f"<h3>{s}</h3>" in page for s in sites)
    assert stdout.startswith("# quality on real data")
    assert result["epsilons"] == [1.0, 8.0]
    assert [r["dataset"] for r in result["results"]] == ["heart", "bank", "beijing"]
    for res in result["results"]:
        n = len(res["sites"])
        arms = [a["arm"] for a in res["arms"]]
        assert arms == [
            "centralised",
            "local-only",
            "streamfed eps=1",
            "streamfed eps=8",
            f"secure eps=1 t={n}",
            f"secure eps=8 t={n}",
        ]
        for a in res["arms"]:
            kinds = {"local"} if a["epsilon_target"] is None else {"served", "global", "local"}
            assert set(a["per_site"]) == kinds
            assert all(set(v) == set(res["sites"]) for v in a["per_site"].values())
            if a["epsilon_target"] is not None:  # the tighter accountant's epsilon for the calibrated sigma
                assert a["epsilon_per_record"] == pytest.approx(a["epsilon_target"], rel=1e-2)
                assert a["epsilon_pld"] <= a["epsilon_rdp"]
                assert min(a["versions"]) > 0 and a["rejected"] == [0]
            if a["secure"]:  # each site adds sigma C / sqrt(t); the unmasked total is the sites' total
                assert a["noise_std"] == pytest.approx(a["sigma"] * res["model"]["clip_norm"] / a["threshold"] ** 0.5)
                assert a["unmask_error"] <= 2 * n / a["scale"]
        for arm in ("streamfed eps=1", "streamfed eps=8"):
            assert f"TARGET {res['dataset']} {arm}: served" in stdout
        assert f"TARGET {res['dataset']} streamfed eps=8: global" in stdout
    assert stdout.count("RATIO ") == 9
    assert "targets missed:" in stdout


def test_rounds_quick(tmp_path: Path) -> None:
    stdout, result = _run("rounds.py", tmp_path)
    assert stdout.startswith("# continuous against rounds")
    assert [t["fraction"] for t in result["targets"]] == [0.5, 0.8, 0.9]
    assert set(result["arms"]) == {"rounds (sync FedAvg)", "streamfed (FedBuff)"}
    for arm in result["arms"].values():
        assert arm["versions"] > 0 and arm["updates"] > 0 and len(arm["curve"]) == arm["versions"] + 1
    assert "RATIO rounds/streamfed time to 90% target" in stdout
