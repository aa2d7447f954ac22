"""Start-up of ``streamfed up``: seconds from the command to every process ready, the first record
learnt and the first global version, against the floor of starting the same processes bare.

Each run is ``streamfed up --duration D --no-live`` in a fresh folder (embedded broker, the shipped
``fraud`` topology by default); its summary's timeline counts from inside the command, and the
time from the command to that 0 (``timeline_start_unix``) is added, so every figure is from the
moment the command was started. The baseline, measured before each run: as many bare Python
processes as ``up`` starts (broker aside), started together, each importing the ``streamfed`` CLI and
exiting; the time until the last one exits is the floor no start-up can beat on this machine.

    python benchmarks/startup.py                  # 3 runs of 60 s (~4 min): start-up and AUCs
    python benchmarks/startup.py --runs 1 --duration 15
    python benchmarks/startup.py --quick           # one run of 5 s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, median, ratio, table

from streamfed.topology import load_topology


def floor(processes: int) -> float:
    """Seconds for ``processes`` interpreters, started together, to import the CLI and exit."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", "import streamfed.cli.main"]) for _ in range(processes)]
    for p in procs:
        p.wait()
    return time.perf_counter() - t0


def run(topology: str, duration: float, folder: Path) -> tuple[dict[str, float], dict[str, Any], int]:
    """(timeline from the command, summary, exit code) of one ``streamfed up``."""
    cmd = [sys.executable, "-m", "streamfed", "up", topology, "--duration", str(duration)]
    cmd += ["--no-live", "--summary-json", str(folder / "summary.json")]
    started = time.time()
    with open(folder / "up.log", "wb") as log:
        code = subprocess.call(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    if not (folder / "summary.json").exists():
        raise RuntimeError(f"streamfed up exited {code} without a summary:\n{(folder / 'up.log').read_text()[-3000:]}")
    summary = json.loads((folder / "summary.json").read_text())
    offset = summary["timeline_start_unix"] - started
    timeline = {k: v + offset for k, v in summary["timeline_seconds"].items()}
    return timeline, summary, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=60.0, help="each run's --duration")
    ap.add_argument("--topology", default="fraud")
    ap.add_argument("--quick", action="store_true", help="one run of 5 s (CI smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.duration = 1, 5.0
    header("startup: streamfed up, seconds from the command to records and the first version", args)
    topo = load_topology(args.topology)
    # aggregator, sites, one simulator or a replay per site: what `up` starts besides the broker
    processes = 1 + len(topo.sites) + (1 if any(s.simulator for s in topo.sites) else 0)
    processes += sum(1 for s in topo.sites if s.source is not None and s.simulator is None)
    rows = []
    firsts: list[float] = []
    floors: list[float] = []
    for i in range(args.runs):
        load = os.getloadavg()[0]
        floors.append(floor(processes))
        with tempfile.TemporaryDirectory(prefix="streamfed-startup-") as tmp:
            timeline, summary, code = run(args.topology, args.duration, Path(tmp))
        firsts.append(timeline.get("first_record", float("nan")))
        sites = summary.get("sites", {})
        rows.append(
            [
                i + 1,
                load,
                floors[-1],
                timeline.get("ready", float("nan")),
                timeline.get("first_record", float("nan")),
                timeline.get("first_version", float("nan")),
                summary.get("model_versions"),
                summary.get("global", {}).get("auc", float("nan")),
                " / ".join(f"{s.get('auc') or float('nan'):.3f}" for s in sites.values()),
                code,
            ]
        )
        print(f"run {i + 1}: {rows[-1]}", flush=True)
    print()
    table(
        [
            "run",
            "load (1 min)",
            f"floor: {processes} bare starts (s)",
            "ready (s)",
            "first record (s)",
            "first version (s)",
            "versions",
            "global AUC",
            "served AUC per site",
            "exit",
        ],
        rows,
    )
    print("seconds from the command; targets: first record <= 10, first version <= 15 (idle 2-core machine)")
    ratio("first_record/floor", median(firsts) / median(floors))


if __name__ == "__main__":
    main()
