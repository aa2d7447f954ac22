"""A wrong bootstrap: every command that needs Kafka fails with one line naming the address, exit 2,
no traceback and no librdkafka lines, and creates nothing. Nothing listens on the address used."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = [
    ["models", "list", "-t", "fraud"],
    ["lag", "-t", "fraud"],
    ["provision", "-t", "fraud"],
    ["privacy", "report", "-t", "fraud"],
    ["simulate", "-t", "fraud", "--duration", "1"],
    ["aggregator", "-t", "fraud", "--duration", "1"],
    ["replay", "-t", "heart", "--site", "cleveland"],
]


@pytest.fixture(scope="module")
def dead_address() -> str:
    with socket.socket() as s:  # a port that was free a moment ago, and nothing listens on it
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_a_wrong_bootstrap_is_one_readable_line(args: list[str], dead_address: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "streamfed", *args, "--bootstrap", dead_address]
    if args[0] in ("models", "privacy", "aggregator"):
        cmd += ["--state-dir", str(tmp_path / "state")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1, lines[:20]
    assert lines[0].startswith("error: no Kafka broker answered at " + dead_address)
    assert "--bootstrap" in lines[0]
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.jsonl"))


def test_replay_names_a_missing_file_before_it_tries_the_broker(dead_address: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such.csv"
    cmd = [sys.executable, "-m", "streamfed", "replay", str(missing), "-t", "heart", "--site", "cleveland"]
    out = subprocess.run([*cmd, "--bootstrap", dead_address], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert str(missing) in out.stderr and "Traceback" not in out.stderr
    assert "Kafka" not in out.stderr
