"""`streamfed --log-format json`: every log line is one JSON object, inherited by child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = """
import logging
from streamfed.cli.common import setup_logging
setup_logging()
log = logging.getLogger("streamfed.site")
log.info("site=%s ready", "a")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("step failed")
"""


def test_json_lines_carry_time_level_logger_message_and_traceback() -> None:
    env = {"STREAMFED_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    first, second = (json.loads(line) for line in res.stderr.splitlines())
    assert first["level"] == "INFO" and first["logger"] == "streamfed.site" and first["message"] == "site=a ready"
    assert first["time"].endswith("+00:00") and isinstance(first["process"], int)
    assert second["level"] == "ERROR" and "ZeroDivisionError" in second["exception"]
    text = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert " INFO streamfed.site: site=a ready" in text.stderr.splitlines()[0]


def test_the_option_sets_the_format_for_what_the_command_starts_and_rejects_others(monkeypatch) -> None:
    from typer.testing import CliRunner

    from streamfed.cli.main import app

    monkeypatch.setenv("STREAMFED_LOG_FORMAT", "text")
    res = CliRunner().invoke(app, ["--log-format", "json", "topology", "graph", "heart"])
    assert res.exit_code == 0, res.output
    # the processes `up` starts copy os.environ (up_children.Child.start), so they log JSON too
    assert os.environ["STREAMFED_LOG_FORMAT"] == "json"
    bad = subprocess.run(
        [sys.executable, "-m", "streamfed", "--log-format", "xml", "topology", "validate", "heart"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "valid: text, json" in bad.stderr
