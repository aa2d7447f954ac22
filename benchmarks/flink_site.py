"""Records/s of a site as a PyFlink job against ``streamfed site`` (SiteProcessor) on the same topic.

Both run the shipped ``fraud`` topology's site learner, unchanged, over one pre-filled topic of
simulated card transactions on Apache Kafka (or ``--bootstrap``), each under a fresh topology name
(fresh consumer groups, state and ledger), interleaved ``--reps`` times:

  (a) ``streamfed site``: ``SiteProcessor.run``, timed from its first fetched batch to its last
      processed one (as in ``site_ingest.py``);
  (b) the Flink job (``streamfed.integrations.flink.site_job``, ``bounded=True``: Flink's
      ``KafkaSource`` through the Kafka SQL connector, one keyed Python operator, checkpoints every
      2 s, learner snapshots every 20,000 records), timed inside the operator from its first record
      to its last learnt batch. The job's wall time (JVM, mini-cluster and Python worker start-up,
      the bounded source's end) is printed as well.

Needs the ``[flink]`` extra (its own venv: Apache Beam pins numpy < 2.2) and Java 17.

    python benchmarks/flink_site.py               # 50k records, 2 repetitions (~4 min)
    python benchmarks/flink_site.py --records 20000 --reps 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, median, ratio, spread, table
from site_ingest import SIM, SITE, fill, full, topology

from streamfed.integrations.flink import site_job
from streamfed.kafka.topics import provision_topology
from streamfed.privacy.signing import write_keypair
from streamfed.topology import load_topology


def flink(bootstrap: str, topic: str, state: Path, n: int) -> tuple[float, float, dict[str, Any]]:
    """(records/s inside the operator, the job's wall seconds, the operator's report)."""
    overrides = {
        "name": f"bench{uuid.uuid4().hex[:8]}",
        "state_dir": str(state),
        "kafka": {"bootstrap_servers": bootstrap},
        "sites": [{"id": SITE, "topic": topic, "simulator": SIM}],
    }
    topo = load_topology("fraud", overrides)
    provision_topology(topo)
    site = topo.site(SITE)
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    t0 = time.perf_counter()
    report = site_job("fraud", SITE, overrides=overrides, bounded=True).execute()
    wall = time.perf_counter() - t0
    if report["records"] != n:
        raise RuntimeError(f"the Flink job learnt {report['records']} of {n} records ({report['dead_letters']} dead)")
    return n / report["learn_seconds"], wall, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting Apache Kafka")
    ap.add_argument("--quick", action="store_true", help="5,000 records, 1 repetition (CI smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.records, args.reps = 5000, 1
    header("flink_site: records/s of the site as a PyFlink job vs streamfed site, same topic", args)
    with ExitStack() as stack:
        bootstrap = args.bootstrap
        if bootstrap is None:
            from streamfed.broker.kafka import KafkaCluster

            bootstrap = stack.enter_context(KafkaCluster(brokers=1)).bootstrap
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamfed-bench-")))
        topic = f"bench.flink_site.{uuid.uuid4().hex[:8]}"
        fill_s = fill(topology(bootstrap, topic, tmp / "base"), args.records)
        print(f"filled {topic}: {args.records:,} records in {fill_s:.1f} s\n", flush=True)
        site_rates: list[float] = []
        flink_rates: list[float] = []
        walls: list[float] = []
        report: dict[str, Any] = {}
        for rep in range(args.reps):
            r, _ = full(bootstrap, topic, tmp / f"site{rep}", args.records)
            site_rates.append(r)
            r, wall, report = flink(bootstrap, topic, tmp / f"flink{rep}", args.records)
            flink_rates.append(r)
            walls.append(wall)
            print(f"rep {rep + 1}/{args.reps}: site {site_rates[-1]:,.0f}/s, flink {r:,.0f}/s (job {wall:.1f} s)")
        print()
        table(
            ["variant", "records/s (median)", f"min..max of {args.reps}", "work done"],
            [
                ["streamfed site (SiteProcessor.run)", median(site_rates), spread(site_rates), "-"],
                [
                    "PyFlink job (site_job, bounded)",
                    median(flink_rates),
                    spread(flink_rates),
                    f"{report['updates_published']} updates, {report['deep_steps']} deep steps; "
                    f"job wall {median(walls):.1f} s",
                ],
            ],
        )
        ratio("flink/site", median(flink_rates) / median(site_rates))


if __name__ == "__main__":
    main()
