"""Freshness: update publication -> first version that includes it; transaction -> first update it influenced.

A live federation on the embedded broker: the shipped ``fraud`` topology with N simulated sites
(3 and 30), each at ``--rate`` records/s. The simulator (``streamfed simulate``) and the aggregator
(``streamfed aggregator``) run as their own processes, as deployed; the N ``SiteProcessor``s run as
threads of this process (one GIL between them: on this 2-core machine, N site processes would only
compete for the same cores). Triggers are the topology's (``update`` and ``aggregation`` in
topologies/fraud.yaml: now an update every 500 labelled records or 2 s, at least 100; FedBuff K = 3).

Measured, on one clock (everything runs on this machine):
  * update -> version: from the update's ``created_ms`` (stamped just before it is signed and
    produced) to the moment this process reads the lineage record of the first version listing it
    (so it includes the aggregator's transaction commit and a reader's fetch);
  * transaction -> update: from a transaction's producer timestamp to the publication of the first
    update of its site whose window learnt it (labelled records: only those change the model).

Baselines from the same run (what an implementation with zero processing cost would show under the
same triggers and the same publication times):
  * buffer-fill floor of an update: the publication of the last update of its buffer minus its own;
  * window floor of a transaction: the next publication by its site after it was produced.

    python benchmarks/freshness.py            # 3 sites for 40 s, 30 sites for 60 s (~2.5 min)
    python benchmarks/freshness.py --quick    # 3 sites for 10 s, 30 sites for 10 s (~1 min)
    python benchmarks/freshness.py --fetch-wait-ms 20   # consumers' fetch.wait.max.ms 20 instead of 500
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, ratio, table

from streamfed.broker import EmbeddedBroker
from streamfed.kafka.clients import make_consumer
from streamfed.kafka.topics import provision_topology
from streamfed.privacy.signing import write_keypair
from streamfed.serde.avro import AvroCodec
from streamfed.site.build import build_site
from streamfed.site.processor import SiteProcessor
from streamfed.topology import Topology, load_topology
from streamfed.topology.loader import resolve_topology_path

WARMUP_S = 3.0  # transactions and updates of the first seconds of traffic are not counted


@dataclass
class SiteTrace:
    """What one site did, stamped in wall-clock ms: records learnt and updates published."""

    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    window: list[np.ndarray] = field(default_factory=list)
    learnt_delay_ms: list[np.ndarray] = field(default_factory=list)
    produced_ms: list[np.ndarray] = field(default_factory=list)  # per published update: its records
    published_ms: list[int] = field(default_factory=list)


def instrument(proc: SiteProcessor, trace: SiteTrace) -> None:
    """Wrap the processor's batch, learn and publish steps to record timestamps (no behaviour change)."""
    process, learn, publish = proc.process, proc.learner.learn, proc.publish

    def traced_process(msgs: list) -> None:
        trace.pending = np.fromiter((m.timestamp()[1] for m in msgs if m.error() is None), dtype=np.int64, count=-1)
        process(msgs)

    def traced_learn(X: np.ndarray, y: np.ndarray, first_event_ms: int | None = None, **kw: Any) -> Any:
        ts = trace.pending
        if len(ts) == len(y):  # no dead letters in the batch: rows are the messages, in order
            labelled = ts[~np.isnan(y)]
            trace.window.append(labelled)
            trace.learnt_delay_ms.append(int(time.time() * 1000) - labelled)
        return learn(X, y, first_event_ms, **kw)

    def traced_publish() -> bool:
        sent = publish()
        if sent:
            trace.published_ms.append(int(time.time() * 1000))
            trace.produced_ms.append(np.concatenate(trace.window) if trace.window else np.zeros(0, np.int64))
        trace.window = []
        return sent

    proc.process = traced_process  # type: ignore[method-assign]
    proc.learner.learn = traced_learn  # type: ignore[method-assign]
    proc.publish = traced_publish  # type: ignore[method-assign]


def write_topology(
    bootstrap: str, folder: Path, n_sites: int, rate: float, fetch_wait_ms: int | None
) -> tuple[Path, Topology]:
    src = resolve_topology_path("fraud")
    data = yaml.safe_load(src.read_text())
    data["name"] = f"fresh{uuid.uuid4().hex[:8]}"
    data["state_dir"] = str(folder / "state")
    data.setdefault("kafka", {})["bootstrap_servers"] = bootstrap
    if fetch_wait_ms is not None:  # librdkafka's default is 500 ms: a fetch waits that long for data
        data["kafka"].setdefault("consumer_settings", {})["fetch.wait.max.ms"] = fetch_wait_ms
    data["sites"] = [
        {
            "id": f"bank-{i:02d}",
            "simulator": {
                "rate": rate,
                "fraud_rate": 0.01 + 0.05 * (i % 3) / 2,
                "online_share": 0.25,
                "night_share": 0.1,
                "seed": 100 + i,
            },
        }
        for i in range(n_sites)
    ]
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    topo = load_topology(path)
    provision_topology(topo)
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    return path, topo


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamfed", *args]


def run_scenario(
    bootstrap: str, tmp: Path, n_sites: int, rate: float, seconds: float, fetch_wait_ms: int | None
) -> dict[str, Any]:
    folder = tmp / f"s{n_sites}"
    folder.mkdir()
    path, topo = write_topology(bootstrap, folder, n_sites, rate, fetch_wait_ms)
    drain_s = topo.update.every_seconds + 2
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [open(folder / f"{name}.log", "wb") for name in ("aggregator", "simulator")]  # noqa: SIM115
    agg = subprocess.Popen(
        cli("aggregator", "-t", str(path), "--metrics-port", "0", "--duration", str(seconds + drain_s + 15)),
        stdout=logs[0],
        stderr=subprocess.STDOUT,
        env=env,
    )
    procs = [build_site(topo, s.id) for s in topo.sites]
    traces = [SiteTrace() for _ in procs]
    for p, t in zip(procs, traces, strict=True):
        instrument(p, t)
    threads = [threading.Thread(target=p.run, daemon=True) for p in procs]
    for th in threads:
        th.start()
    time.sleep(3.0)  # group joins (about session.timeout.ms / 2 on this broker)

    lineage = make_consumer(topo.kafka, None)
    lineage.assign([TopicPartition(topo.lineage_topic, 0, OFFSET_BEGINNING)])
    codec = AvroCodec("lineage")
    seen_ms: dict[tuple[str, int], int] = {}  # (site, sequence) -> when its first version was read
    fill_floor_ms: dict[tuple[str, int], int] = {}
    built_ms: dict[tuple[str, int], int] = {}  # (site, sequence) -> version's created_ms - update's
    versions = 0

    def read_lineage(wait_s: float) -> None:
        nonlocal versions
        for msg in lineage.consume(100, wait_s):
            if msg.error() is not None:
                continue
            now = int(time.time() * 1000)
            rec = codec.decode(msg.value())
            ups = rec["updates"]
            if not ups:
                continue
            versions += 1
            last = max(u["published_ms"] for u in ups)
            for u in ups:
                key = (u["site_id"], int(u["sequence"]))
                if key not in seen_ms:
                    seen_ms[key] = now - int(u["published_ms"])
                    built_ms[key] = int(rec["created_ms"]) - int(u["published_ms"])
                    fill_floor_ms[key] = last - int(u["published_ms"])

    sim = subprocess.Popen(
        cli("simulate", "-t", str(path), "--metrics-port", "0", "--duration", str(seconds)),
        stdout=logs[1],
        stderr=subprocess.STDOUT,
        env=env,
    )
    t_start = time.time() * 1000
    deadline = time.monotonic() + seconds + drain_s
    while time.monotonic() < deadline:
        read_lineage(0.2)
    sim.wait(30)
    for p in procs:
        p.stop_event.set()
    for th in threads:
        th.join(30)
    end = time.monotonic() + 3
    while time.monotonic() < end:  # versions of the last updates
        read_lineage(0.2)
    lineage.close()
    agg.terminate()
    try:
        agg.wait(30)
    except subprocess.TimeoutExpired:
        agg.kill()
    for fh in logs:
        fh.close()

    warm_ms = t_start + WARMUP_S * 1000
    t_end = t_start + seconds * 1000
    # update -> version
    upd_lat, upd_built, upd_floor, censored = [], [], [], 0
    published = 0
    for s, tr in zip(topo.sites, traces, strict=True):
        for seq_i, pub in enumerate(tr.published_ms, start=1):
            if pub < warm_ms:
                continue
            published += 1
            key = (s.id, seq_i)
            if key in seen_ms:
                upd_lat.append(seen_ms[key])
                upd_built.append(built_ms[key])
                upd_floor.append(fill_floor_ms[key])
            else:
                censored += 1
    # transaction -> update, and its floor (the site's next publication after the transaction)
    tx_lat, tx_floor, learnt = [], [], []
    for tr in traces:
        pubs = np.asarray(tr.published_ms, dtype=np.int64)
        for pub, ts in zip(tr.published_ms, tr.produced_ms, strict=True):
            ts = ts[(ts >= warm_ms) & (ts <= t_end)]
            tx_lat.append(pub - ts)
            nxt = np.searchsorted(pubs, ts, side="left")
            tx_floor.append(pubs[np.minimum(nxt, len(pubs) - 1)] - ts)
        for d in tr.learnt_delay_ms:
            learnt.append(d)
    cat = lambda xs: np.concatenate(xs).astype(np.float64) / 1000 if xs else np.zeros(0)  # noqa: E731
    return {
        "sites": n_sites,
        "rate": rate,
        "seconds": seconds,
        "versions": versions,
        "updates": published,
        "censored": censored,
        "update_to_version": np.asarray(upd_lat, dtype=np.float64) / 1000,
        "update_to_built": np.asarray(upd_built, dtype=np.float64) / 1000,
        "buffer_fill_floor": np.asarray(upd_floor, dtype=np.float64) / 1000,
        "tx_to_update": cat(tx_lat),
        "window_floor": cat(tx_floor),
        "tx_to_learnt": cat(learnt),
        "agg_rc": agg.returncode,
        "records": sum(p.report.records for p in procs),
    }


def pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (CI smoke test)")
    ap.add_argument("--sites", default="3,30", help="comma-separated site counts (default 3,30)")
    ap.add_argument("--rate", type=float, default=100.0, help="records/s per site (default 100)")
    ap.add_argument("--seconds", type=float, default=None, help="traffic per scenario (default 40/60; quick 12)")
    ap.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=None,
        help="set librdkafka fetch.wait.max.ms for every consumer (default: the topology's, i.e. librdkafka's 500)",
    )
    ap.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting the embedded broker")
    args = ap.parse_args()
    counts = [int(s) for s in args.sites.split(",")]
    header("freshness: update -> version and transaction -> update latency, live federation", args)

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker()
        bootstrap = broker.start()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="streamfed-bench-") as tmp:
            for n in counts:
                seconds = args.seconds or (10.0 if args.quick else (40.0 if n <= 3 else 60.0))
                r = run_scenario(bootstrap, Path(tmp), n, args.rate, seconds, args.fetch_wait_ms)
                print(
                    f"{n} sites x {args.rate:g}/s for {seconds:g} s: {r['records']:,} records, {r['updates']} updates"
                    f" counted ({r['censored']} not yet in a version at the end), {r['versions']} versions",
                    flush=True,
                )
                results.append(r)
    finally:
        if broker is not None:
            broker.stop()
    print()
    rows = []
    for r in results:
        for name, key in (
            ("update -> first version (read)", "update_to_version"),
            ("  of which until the version was built", "update_to_built"),
            ("  floor: buffer fill", "buffer_fill_floor"),
            ("transaction -> first update", "tx_to_update"),
            ("  floor: site's next publication", "window_floor"),
            ("transaction -> learnt by its site", "tx_to_learnt"),
        ):
            x = r[key]
            rows.append([r["sites"], name, len(x), pct(x, 50), pct(x, 99), float(np.mean(x)) if len(x) else np.nan])
    table(["sites", "latency (s)", "n", "p50", "p99", "mean"], rows)
    for r in results:
        n = r["sites"]
        for what, key, floor in (
            ("update_to_version", "update_to_version", "buffer_fill_floor"),
            ("transaction_to_update", "tx_to_update", "window_floor"),
        ):
            for q in (50, 99):
                f = pct(r[floor], q)
                ratio(f"{what}_p{q}/floor_p{q}[{n} sites]", pct(r[key], q) / f if f > 0 else float("nan"))
        print(
            f"RESULT {n} sites: update->version p50 {pct(r['update_to_version'], 50):.3f} s p99"
            f" {pct(r['update_to_version'], 99):.3f} s; transaction->update p50 {pct(r['tx_to_update'], 50):.3f} s"
            f" p99 {pct(r['tx_to_update'], 99):.3f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
