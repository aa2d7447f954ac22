"""Helpers for integration tests: run `streamfed` commands as processes, poll with bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamfed", *args]


def start(args: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cli(*args), stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=cwd, env=env)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``.

    A :class:`BrokerError` from ``check`` (a topic the processes under test have not created yet:
    Apache Kafka propagates new topics asynchronously) counts as not yet.
    """
    from streamfed.errors import BrokerError

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            got = check()
        except BrokerError as exc:
            last, got = f" (last: {exc})", None
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{last}")


def read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-n:])
    except OSError:
        return "(no log)"


def site_updates(topo: Any, site_id: str) -> list[dict[str, Any]]:
    """The decoded updates of ``site_id`` in the topology's updates topic (read until 2 s idle)."""
    from streamfed.registry import read_topic
    from streamfed.serde.avro import AvroCodec

    got = read_topic(topo.kafka, topo.updates_topic, AvroCodec("model_update"), idle_s=2.0)
    return [rec for _, rec in got if isinstance(rec, dict) and rec["site_id"] == site_id]


def dead_letters(topo: Any) -> list[dict[str, Any]]:
    """The decoded records of the topology's dead-letter topic (read until 2 s idle)."""
    from streamfed.registry import read_topic
    from streamfed.serde.avro import AvroCodec

    got = read_topic(topo.kafka, topo.dead_letter_topic, AvroCodec("dead_letter"), idle_s=2.0)
    return [rec for _, rec in got if isinstance(rec, dict)]
