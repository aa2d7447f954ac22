"""Records/s of one site run as 1, 2 and 4 processes (``streamfed site --worker``) over a 4-partition topic.

Each process is a worker of the same site: one consumer group, a share of the topic's partitions,
its own ledger and update sequence, the whole site path of ``benchmarks/site_ingest.py`` (the
shipped ``fraud`` topology, unchanged). The topic is filled first; then, for each process count, a
fresh consumer group reads it all: every process builds its site, waits at a barrier, and runs
until the processes together have learnt every record.

Each process times itself from its first batch to its last (group joins excluded, as in
``site_ingest.py``); the total is all records over the span from the first process's first batch to
the last one's last batch (a rebalance while the group forms is in it). The baseline is the single
process of the same invocation: ``RATIO scaleout_<k>/one_process`` is the total with k processes
over it. A machine with fewer cores than processes cannot scale past its cores: the header says
how many it has.

    python benchmarks/site_scaleout.py             # 200k records, processes 1 2 4 (~2 min)
    python benchmarks/site_scaleout.py --quick     # 20k records, processes 1 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, kafka_or_embedded, ratio, table
from site_ingest import SITE, fill, topology

PARTITIONS = 4


def _topology(bootstrap: str, topic: str, state: Path, name: str | None = None) -> Any:
    return topology(bootstrap, topic, state, {"partitions": PARTITIONS}, name)


def worker(
    bootstrap: str,
    topic: str,
    state: str,
    topology_name: str,
    name: str,
    total: int,
    learnt: Any,
    barrier: Any,
    out: Any,
) -> None:
    """One process of the site: build it, wait for the others, learn until ``total`` records are learnt
    by all; put ``(name, records, first batch, last batch)`` (unix seconds) on ``out``."""
    from streamfed.site.build import build_site

    topo = _topology(bootstrap, topic, Path(state), topology_name)
    proc = build_site(topo, SITE, worker=name)
    marks: list[float] = []
    process = proc.process

    def timed(msgs: list) -> None:
        if not marks:
            marks.append(time.time())
        before = proc.report.records + proc.report.dead_letters
        process(msgs)
        with learnt.get_lock():
            learnt.value += proc.report.records + proc.report.dead_letters - before
        marks[1:] = [time.time()]

    proc.process = timed  # type: ignore[method-assign]

    def watch() -> None:
        while not proc.stop_event.wait(0.01):
            if learnt.value >= total:
                proc.stop_event.set()

    barrier.wait(300)
    threading.Thread(target=watch, daemon=True).start()
    report = proc.run(timeout_s=600)
    out.put((name, report.records + report.dead_letters, marks[0] if marks else None, marks[-1] if marks else None))


def run_group(bootstrap: str, topic: str, state: Path, k: int, n: int) -> dict[str, Any]:
    """``k`` processes of one site over the filled ``topic`` (a fresh group); their counts and times."""
    ctx = mp.get_context("spawn")  # a clean interpreter each, as `streamfed site` would be
    learnt, barrier, out = ctx.Value("q", 0), ctx.Barrier(k), ctx.Queue()
    group_state = state / f"k{k}-{uuid.uuid4().hex[:6]}"
    made = _topology(bootstrap, topic, group_state)  # one topology (consumer group, key) for the k workers
    procs = [
        ctx.Process(
            target=worker, args=(bootstrap, topic, str(group_state), made.name, f"w{i}", n, learnt, barrier, out)
        )
        for i in range(k)
    ]
    for p in procs:
        p.start()
    got = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"a worker failed: exit codes {[p.exitcode for p in procs]}")
    records = sum(r for _, r, _, _ in got)
    if records != n:
        raise RuntimeError(f"{k} processes learnt {records} records of {n}")
    firsts = [f for _, _, f, _ in got if f is not None]
    lasts = [last for _, _, _, last in got if last is not None]
    span = max(lasts) - min(firsts)
    each = {
        name: (r / (last - first) if first is not None and last > first else 0.0, r) for name, r, first, last in got
    }
    return {"k": k, "total": n / span, "each": dict(sorted(each.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k records, processes 1 and 2 (CI smoke test)")
    ap.add_argument("--records", type=int, default=None, help="records in the topic (default 200000; quick 20000)")
    ap.add_argument("--processes", type=int, nargs="+", default=None, help="process counts (default 1 2 4)")
    ap.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting the embedded broker")
    args = ap.parse_args()
    n = args.records or (20_000 if args.quick else 200_000)
    counts = args.processes or ([1, 2] if args.quick else [1, 2, 4])
    if 1 not in counts:
        counts = [1, *counts]
    header(f"site_scaleout: one site as 1..{max(counts)} processes over a {PARTITIONS}-partition topic", args)
    with kafka_or_embedded(args.bootstrap) as bootstrap, tempfile.TemporaryDirectory(prefix="streamfed-bench-") as tmp:
        state = Path(tmp)
        topic = f"bench.site_scaleout.{uuid.uuid4().hex[:8]}"
        fill_s = fill(_topology(bootstrap, topic, state / "base"), n)
        print(f"filled {topic} ({PARTITIONS} partitions): {n:,} records in {fill_s:.1f} s\n", flush=True)
        results = []
        for k in counts:
            res = run_group(bootstrap, topic, state, k, n)
            results.append(res)
            each = ", ".join(f"{w} {r:,.0f}/s ({c:,})" for w, (r, c) in res["each"].items())
            print(f"{k} process(es): {res['total']:,.0f} records/s in all; each: {each}", flush=True)
        print()
        base = results[0]["total"]
        rows = [
            [
                r["k"],
                r["total"],
                " / ".join(f"{rate:,.0f}" for rate, _ in r["each"].values()),
                " / ".join(f"{c:,}" for _, c in r["each"].values()),
                r["total"] / base,
            ]
            for r in results
        ]
        table(["processes", "records/s, all", "records/s, each", "records, each", "x one process"], rows)
        for r in results[1:]:
            ratio(f"scaleout_{r['k']}/one_process", r["total"] / base)


if __name__ == "__main__":
    main()
