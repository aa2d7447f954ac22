"""The built wheel works outside the repository: it carries the shipped topologies and schemas, and
a topology drafted from a user's CSV runs from it.

The wheel goes into a fresh venv under a temporary folder with ``--no-deps``; its dependencies come
from the running environment through a .pth line (the editable checkout's own finder is not
processed that way, so ``streamfed`` is imported from the wheel: asserted), which keeps this test
from downloading torch again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from streamfed.topology.loader import REPO_ROOT
from tests.unit.test_draft import _write_csv

pytestmark = pytest.mark.kafka


def _run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _summary(path: Path) -> dict:
    return dict(json.loads(path.read_text()))


def test_the_wheel_validates_and_runs_shipped_and_drafted_topologies_outside_the_repo(
    tmp_path: Path, bootstrap: str
) -> None:
    try:
        import setuptools  # noqa: F401

        isolation = ["--no-build-isolation"]  # build with what is installed (no download)
    except ImportError:
        isolation = []
    whl = tmp_path / "whl"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(whl), str(REPO_ROOT)], tmp_path
    )
    [wheel] = list(whl.glob("streamfed-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    purelib = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    (purelib / "outer-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(py), "-c", "import streamfed; print(streamfed.__file__)"], work).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    cli = str(venv / "bin" / "streamfed")

    validated = _run([cli, "topology", "validate", "fraud"], work).stdout
    assert "# privacy: mechanism window_sum" in validated and "name: fraud" in validated
    up = [cli, "up", "--duration", "6", "--bootstrap", bootstrap, "--no-live", "--summary-json"]
    _run([*up, str(work / "fraud.json"), "--state-dir", str(work / "s1")], work)
    fraud = _summary(work / "fraud.json")
    assert fraud["failed"] == [] and fraud["transactions"] > 0 and fraud["notes"] == []
    assert fraud["model_versions"] >= 1, fraud

    csv_file = _write_csv(work / "visits.csv", 600)
    _run([cli, "topology", "init", "--from-csv", str(csv_file), "--label", "readmitted", "--site-column", "clinic",
          "--name", "visits", "--rate", "100"], work)  # fmt: skip
    assert "record_schema: visits.avsc" in (work / "visits.yaml").read_text()
    _run([cli, "topology", "validate", "visits.yaml"], work)
    _run([*up[:2], "visits.yaml", *up[2:], str(work / "visits.json"), "--state-dir", str(work / "s2")], work)
    visits = _summary(work / "visits.json")
    assert visits["failed"] == [] and visits["transactions"] > 0
    assert set(visits["sites"]) == {"north", "south-wing"}
    assert all(s["records"] > 0 for s in visits["sites"].values()), visits["sites"]
    assert visits["model_versions"] >= 1, visits
