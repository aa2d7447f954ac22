"""Continuous against rounds: simulated wall-clock time to a target AUC, synchronous FedAvg rounds
(every site waits for the slowest) against StreamFed's buffered asynchronous aggregation (FedBuff).

The task is the ``beijing`` topology at its per-record epsilon (twelve stations, PM2.5 > 75 next
hour). Every 10th record of each station is held out; the rest is the station's stream. Both arms
use the same ``SiteLearner``s (real clipping, calibrated noise, ledger, signatures), the same
windows of ``update.every_records`` records per update, the same ``Aggregator.verify`` and
``FedBuff`` code, the same seeds and the same site speeds. Only the schedule differs:

- ``rounds`` (synchronous FedAvg): each round every site rebases on the current version, learns its
  next window and publishes; the version is the weighted mean of all sites' updates (``FedBuff`` with
  ``buffer_size`` = number of sites, so staleness is always 0). A round lasts as long as its slowest
  site plus the upload and download latency.
- ``streamfed`` (buffered asynchronous): every site learns window after window without waiting;
  the aggregator makes a version from every ``buffer_size`` updates (staleness-weighted); versions
  reach the sites after the download latency and are rebased onto mid-window (at each quarter).

Time is simulated (event-driven, deterministic for a seed), not measured: site ``i`` learns
``rate_i`` records per simulated second, the rates spread log-uniformly over ``--spread`` (fastest /
slowest) and each window's duration is multiplied by a log-normal jitter; every message takes
``--latency`` seconds. Real time on this shared 2-core machine would measure the machine, not the
schedule. Learning itself is real. The server step is scaled so a contributed update moves the model
as much in both arms (``server_learning_rate * sites / buffer_size`` for rounds), so noise per update
is the same too.

Quality is the mean over stations of the held-out AUC of each new global version. Targets are fixed
fractions (50%, 80%, 90%) of the way from version 0's AUC to the best AUC that both arms reach; the
ratio is rounds' time to the target over StreamFed's.

    python benchmarks/rounds.py           # twelve stations, all rows (~3-6 min on 2 cores)
    python benchmarks/rounds.py --quick   # four stations, 2,000 rows each (< 60 s)
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _federation as F
from _common import header, ratio, table

from streamfed.learners.federated import build_federated_model, sigmoid
from streamfed.site.learner import SiteLearner
from streamfed.topology import Topology

FRACTIONS = (0.5, 0.8, 0.9)
PIECES = 4  # a window is learnt in quarters; versions that arrived are rebased onto between them


@dataclass
class Curve:
    name: str
    times: list[float] = field(default_factory=list)
    aucs: list[float] = field(default_factory=list)
    updates: int = 0
    records: int = 0
    end: float = 0.0

    def time_to(self, target: float) -> float:
        for t, a in zip(self.times, self.aucs, strict=True):
            if a >= target:
                return t
        return math.nan


class Evaluator:
    """Held-out AUC (mean over sites) of a parameter vector."""

    def __init__(self, topo: Topology, held: dict[str, F.SiteData]) -> None:
        self.model = build_federated_model(topo.model, device="cpu")
        self.held = held

    def __call__(self, params: np.ndarray) -> float:
        vals = [F.auc(d.y, sigmoid(self.model.logits(params, d.X))) for d in self.held.values()]
        return float(np.nanmean(vals))


def split(data: dict[str, F.SiteData], every: int = 10) -> tuple[dict[str, F.SiteData], dict[str, F.SiteData]]:
    """(streams, held-out): every ``every``-th record of each site is held out."""
    streams, held = {}, {}
    for s, d in data.items():
        h = np.zeros(len(d.y), dtype=bool)
        h[every - 1 :: every] = True
        streams[s] = F.SiteData(s, d.X[~h], d.y[~h], d.t[~h])
        held[s] = F.SiteData(s, d.X[h], d.y[h], d.t[h])
    return streams, held


class Sites:
    """The sites' learners and stream positions, shared by both schedules."""

    def __init__(self, topo: Topology, streams: dict[str, F.SiteData], seed: int) -> None:
        root = np.random.default_rng(seed)
        self.window = topo.update.every_records
        self.streams = streams
        self.learners: dict[str, SiteLearner] = {
            s: F._learner(topo, s, int(root.integers(1 << 62)), publish=False, contribute=True) for s in streams
        }
        self.pos = dict.fromkeys(streams, 0)
        self.records = 0

    def has_window(self, s: str) -> bool:
        return self.pos[s] + self.window <= len(self.streams[s].y)

    def learn_piece(self, s: str, piece: int) -> None:
        lo = self.pos[s] + piece * self.window // PIECES
        hi = self.pos[s] + (piece + 1) * self.window // PIECES
        d = self.streams[s]
        self.learners[s].learn(d.X[lo:hi], d.y[lo:hi])
        self.learners[s].maybe_step()
        self.records += hi - lo

    def publish(self, s: str) -> dict[str, Any] | None:
        self.pos[s] += self.window
        return self.learners[s].make_update()


def speeds(sites: list[str], spread: float, fastest: float, seed: int) -> dict[str, float]:
    """Records per second per site: log-uniform from ``fastest`` down to ``fastest / spread``."""
    n = len(sites)
    rates = fastest / spread ** (np.arange(n) / max(1, n - 1))
    np.random.default_rng(seed).shuffle(rates)
    return dict(zip(sites, rates.tolist(), strict=True))


def run_rounds(topo: Topology, streams, evaluate, rates, args) -> Curve:
    n = len(streams)
    agg = topo.aggregation
    sync = topo.model_copy(
        update={
            "aggregation": agg.model_copy(
                update={"buffer_size": n, "server_learning_rate": agg.server_learning_rate * n / agg.buffer_size}
            )
        }
    )
    server = F.Server(sync)
    sites = Sites(sync, streams, args.seed)
    jitter = np.random.default_rng(args.seed + 1)
    curve = Curve("rounds (sync FedAvg)")
    t = 0.0
    curve.times.append(t)
    curve.aucs.append(evaluate(server.params))
    while all(sites.has_window(s) for s in streams) and t < args.horizon:
        longest = 0.0
        records = []
        for s in streams:
            longest = max(longest, sites.window / rates[s] * float(jitter.lognormal(0.0, args.jitter)))
            for piece in range(PIECES):
                sites.learn_piece(s, piece)
            rec = sites.publish(s)
            if rec is not None:
                records.append(rec)
        t += longest + 2 * args.latency  # slowest site, its upload, and the new version's download
        for rec in records:
            curve.updates += 1
            server.submit(rec)
        sha = server.sha()
        for lr in sites.learners.values():
            lr.rebase(server.version, server.params, sha)
        curve.times.append(t)
        curve.aucs.append(evaluate(server.params))
    curve.records, curve.end = sites.records, t
    return curve


def run_async(topo: Topology, streams, evaluate, rates, args, horizon: float) -> Curve:
    server = F.Server(topo)
    sites = Sites(topo, streams, args.seed)
    jitter = np.random.default_rng(args.seed + 1)
    curve = Curve("streamfed (FedBuff)")
    curve.times.append(0.0)
    curve.aucs.append(evaluate(server.params))
    published: list[tuple[float, int, np.ndarray, str]] = []  # (arrival at sites, version, params, sha)
    seq = 0
    events: list[tuple[float, int, str, str, int, float]] = []  # (time, seq, kind, site, piece, piece_s)

    def start_window(s: str, t: float) -> None:
        nonlocal seq
        if sites.has_window(s):
            piece_s = sites.window / rates[s] * float(jitter.lognormal(0.0, args.jitter)) / PIECES
            seq += 1
            heapq.heappush(events, (t + piece_s, seq, "piece", s, 0, piece_s))

    for s in streams:
        start_window(s, 0.0)
    uploads: dict[int, dict[str, Any]] = {}
    t = 0.0
    while events:
        t, _, kind, s, piece, piece_s = heapq.heappop(events)
        if t > horizon:
            t = horizon
            break
        if kind == "upload":
            curve.updates += 1
            if server.submit(uploads.pop(piece)):
                published.append((t + args.latency, server.version, server.params, server.sha()))
                curve.times.append(t)
                curve.aucs.append(evaluate(server.params))
            continue
        lr = sites.learners[s]
        arrived = [p for p in published if p[0] <= t and p[1] > lr.base_version]
        if arrived:
            _, version, params, sha = arrived[-1]
            lr.rebase(version, params, sha)
        sites.learn_piece(s, piece)
        if piece + 1 < PIECES:
            seq += 1
            heapq.heappush(events, (t + piece_s, seq, "piece", s, piece + 1, piece_s))
            continue
        rec = sites.publish(s)
        if rec is not None:
            seq += 1
            uploads[seq] = rec
            heapq.heappush(events, (t + args.latency, seq, "upload", s, seq, 0.0))
        start_window(s, t)
    curve.records, curve.end = sites.records, t
    return curve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="four stations, 2,000 rows each (< 60 s)")
    ap.add_argument("--topology", default="beijing")
    ap.add_argument("--sites", type=int, default=None, help="first N sites (default all; quick 4)")
    ap.add_argument("--max-rows", type=int, default=None, help="first rows of each site (default all; quick 2000)")
    ap.add_argument("--spread", type=float, default=10.0, help="fastest site's rate / slowest's")
    ap.add_argument("--fastest", type=float, default=50.0, help="records per simulated second of the fastest")
    ap.add_argument("--jitter", type=float, default=0.3, help="sigma of each window's log-normal duration factor")
    ap.add_argument("--latency", type=float, default=0.5, help="seconds per upload or download")
    ap.add_argument("--horizon", type=float, default=math.inf, help="stop after this many simulated seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n_sites = args.sites if args.sites is not None else (4 if args.quick else None)
    max_rows = args.max_rows if args.max_rows is not None else (2000 if args.quick else None)
    header("continuous against rounds: simulated time to a target AUC", args)
    t0 = time.perf_counter()
    topo = F.load(args.topology)
    ids = [s.id for s in topo.sites][:n_sites]
    streams, held = split(F.load_sites(topo, max_rows=max_rows, sites=ids))
    evaluate = Evaluator(topo, held)
    rates = speeds(ids, args.spread, args.fastest, args.seed)
    sigma, eps = F.per_record_epsilon(topo)
    print(
        f"{topo.name}: {len(ids)} sites, {sum(len(d.y) for d in streams.values()):,} streamed records, "
        f"{sum(len(d.y) for d in held.values()):,} held out; window {topo.update.every_records} records; "
        f"K={topo.aggregation.buffer_size}; server lr {topo.aggregation.server_learning_rate}; "
        f"per-record epsilon {eps:.3f} (sigma {sigma:.3f}, delta {topo.privacy.delta:g})"
    )
    table(["site", "records/s"], [[s, r] for s, r in sorted(rates.items(), key=lambda kv: -kv[1])])
    sync = run_rounds(topo, streams, evaluate, rates, args)
    asyn = run_async(topo, streams, evaluate, rates, args, horizon=sync.end)
    a0 = sync.aucs[0]
    best = min(max(sync.aucs), max(asyn.aucs))
    rows = []
    results: dict[str, Any] = {"targets": [], "arms": {}}
    for frac in FRACTIONS:
        target = a0 + frac * (best - a0)
        ts, ta = sync.time_to(target), asyn.time_to(target)
        rows.append([f"{frac:.0%}", target, ts, ta, ts / ta if ta > 0 else math.nan])
        results["targets"].append({"fraction": frac, "auc": target, "rounds_s": ts, "streamfed_s": ta})
    table(["target", "AUC", "rounds s", "streamfed s", "speed-up"], rows)
    arm_rows = []
    for c in (sync, asyn):
        arm_rows.append([c.name, c.end, len(c.aucs) - 1, c.updates, c.records, c.aucs[-1], max(c.aucs)])
        results["arms"][c.name] = {
            "end_s": c.end,
            "versions": len(c.aucs) - 1,
            "updates": c.updates,
            "records": c.records,
            "final_auc": c.aucs[-1],
            "best_auc": max(c.aucs),
            "curve": list(zip(c.times, c.aucs, strict=True)),
        }
    table(["arm", "simulated s", "versions", "updates", "records", "final AUC", "best AUC"], arm_rows)
    main_ts, main_ta = results["targets"][-1]["rounds_s"], results["targets"][-1]["streamfed_s"]
    ratio(
        f"rounds/streamfed time to {FRACTIONS[-1]:.0%} target",
        main_ts / main_ta if main_ta > 0 else math.nan,
        "FedBuff paper: 2.5-3.8x",
    )
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
