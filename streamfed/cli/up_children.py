"""The processes `streamfed up` runs: what each is started with, how it is watched and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from streamfed.topology import Topology


@dataclass
class Child:
    name: str
    kind: str  # aggregator | site | source
    cmd: list[str]
    log: Path
    summary: Path
    metrics_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    samples: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready(self) -> bool:
        """In its main loop (its ``streamfed_process_ready`` gauge, from its last scrape)."""
        return any(k.startswith("streamfed_process_ready") and v >= 1 for k, v in self.samples.items())

    def terminate(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (if still running), then wait up to ``timeout_s`` before a kill."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def scrape(self) -> dict[str, float]:
        """Sum of each metric family's samples (by name and label set) from the child's /metrics."""
        if self.metrics_port is None:
            return {}
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=0.5) as r:
                text = r.read().decode()
        except OSError:
            return self.samples
        samples: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("topology", "site"))
                key = f"{s.name}{{{labels}}}" if labels else s.name
                samples[key] = samples.get(key, 0.0) + s.value
        self.samples = samples
        return samples


# Seconds a stopping process of each kind gets before it is killed: above its own flush bounds.
GRACE_S = {"source": 45.0, "site": 40.0, "aggregator": 60.0}


def _cli() -> list[str]:
    return [sys.executable, "-m", "streamfed"]


# The sources start with every other process (their imports and set-up overlap the others') and
# wait for this file in the run folder, which `up` creates once every other process is ready.
START_GATE = "sources.go"


def plan(topo: Topology, topo_arg: str, bootstrap: str, state_dir: Path, run_dir: Path, duration: float) -> list[Child]:
    """The processes for ``topo`` (loaded from ``topo_arg``, which each child is given to load again)."""
    from streamfed.broker.embedded import free_port

    common = ["--topology", topo_arg, "--bootstrap", bootstrap]
    children = []
    port = free_port()
    children.append(
        Child(
            "aggregator",
            "aggregator",
            [
                *_cli(),
                "aggregator",
                *common,
                "--state-dir",
                str(state_dir),
                "--metrics-port",
                str(port),
                "--summary-json",
                str(run_dir / "aggregator.json"),
            ],
            run_dir / "logs" / "aggregator.log",
            run_dir / "aggregator.json",
            port,
        )
    )
    for s in topo.sites:
        port = free_port()
        children.append(
            Child(
                s.id,
                "site",
                [
                    *_cli(),
                    "site",
                    *common,
                    "--site",
                    s.id,
                    "--state-dir",
                    str(state_dir),
                    "--metrics-port",
                    str(port),
                    "--summary-json",
                    str(run_dir / f"site-{s.id}.json"),
                ],
                run_dir / "logs" / f"site-{s.id}.log",
                run_dir / f"site-{s.id}.json",
                port,
            )
        )
    if any(s.simulator for s in topo.sites):
        children.append(
            Child(
                "simulator",
                "source",
                [
                    *_cli(),
                    "simulate",
                    *common,
                    "--duration",
                    str(duration),
                    "--summary-json",
                    str(run_dir / "simulator.json"),
                    "--start-gate",
                    str(run_dir / START_GATE),
                ],
                run_dir / "logs" / "simulator.log",
                run_dir / "simulator.json",
            )
        )
    for s in topo.sites:
        if s.source is not None and s.simulator is None:
            children.append(
                Child(
                    f"replay-{s.id}",
                    "source",
                    [
                        *_cli(),
                        "replay",
                        *common,
                        "--site",
                        s.id,
                        "--summary-json",
                        str(run_dir / f"replay-{s.id}.json"),
                        "--start-gate",
                        str(run_dir / START_GATE),
                    ],
                    run_dir / "logs" / f"replay-{s.id}.log",
                    run_dir / f"replay-{s.id}.json",
                )
            )
    return children
