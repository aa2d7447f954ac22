"""Records/s of a site's full path against a bare consume+decode loop and a plain river loop.

Full path: ``SiteProcessor.run`` on a pre-filled topic of the embedded broker: consume with
confluent-kafka, decode (Confluent wire format; by columns, strict: ``AvroCodec.decode_columns``),
validate and featurize the batch as columns (record by record only for a batch with a refused
record), prequential scoring by the personal, global and served models, the personal model's
online learner (micro-batches of 16 rows, ``model.online.micro_batch``), rolling AUC/log loss,
ADWIN, replay buffer, deep (torch) steps every 1,000 records, per-record clipped gradients of the
wide-and-deep federated model, and a noised, accounted, signed update every 500 records: the
shipped ``fraud`` topology, unchanged.

Baselines, in the same invocation, over the same topic / the same decoded records:
  (a) bare: confluent-kafka ``consume`` + ``fastavro.schemaless_reader`` per message, nothing else;
  (b) river: for each decoded record, dict features (the topology's transforms written as a plain
      function), ``predict_proba_one`` then ``learn_one`` of ``river.linear_model.LogisticRegression``.

Timing starts when the first batch has been fetched (group joins take ~1 s on the embedded broker
and are excluded from every variant alike) and ends when the last record is processed.

    python benchmarks/site_ingest.py            # 100k records, 3 repetitions (~2-3 min)
    python benchmarks/site_ingest.py --quick    # 20k records, 1 repetition (< 60 s)
    python benchmarks/site_ingest.py --profile  # also a pyinstrument profile of one full-path run
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, median, ratio, spread, table

from streamfed.broker import EmbeddedBroker
from streamfed.kafka.clients import make_consumer
from streamfed.kafka.topics import provision_topology
from streamfed.learners.features import Featurizer
from streamfed.privacy.signing import write_keypair
from streamfed.serde.avro import AvroCodec
from streamfed.site.build import build_learner, build_site
from streamfed.sources import RecordProducer, TransactionSimulator
from streamfed.topology import SimulatorSpec, Topology, load_topology

SITE = "bank-north"
SIM = {"rate": 600, "fraud_rate": 0.01, "online_share": 0.25, "night_share": 0.08, "seed": 11}
BATCH = 2000  # what SiteProcessor.run takes per consume for the fraud topology


def topology(
    bootstrap: str, topic: str, state: Path, kafka: dict[str, Any] | None = None, name: str | None = None
) -> Topology:
    """The shipped fraud topology, one site reading ``topic``, under a fresh name (fresh groups) unless
    ``name``; its topics made and the site's key written. ``kafka``: more of the kafka section."""
    topo = load_topology(
        "fraud",
        {
            "name": name or f"bench{uuid.uuid4().hex[:8]}",
            "state_dir": str(state),
            "kafka": {"bootstrap_servers": bootstrap, **(kafka or {})},
            "sites": [{"id": SITE, "topic": topic, "simulator": SIM}],
        },
    )
    if name is not None:
        return topo  # made already
    provision_topology(topo)
    site = topo.site(SITE)
    write_keypair(topo.private_key_path(site), topo.public_key_path(site))
    return topo


def fill(topo: Topology, n: int) -> float:
    """Produce ``n`` simulated transactions to the site's topic; returns seconds taken."""
    t0 = time.perf_counter()
    prod = RecordProducer(topo.kafka, "card_transaction", topo.name, "transaction_id")
    sim = TransactionSimulator(SITE, SimulatorSpec(**SIM))
    topic = topo.transactions_topic(topo.site(SITE))
    done = 0
    while done < n:
        k = min(10_000, n - done)
        prod.send(topic, SITE, sim.batch(k, t=done / SIM["rate"]))
        done += k
    if prod.flush(60) or prod.errors:
        raise RuntimeError(f"could not produce the records ({prod.errors} delivery errors)")
    return time.perf_counter() - t0


# -- (a) bare consume + decode --------------------------------------------------------------------
def bare(topo: Topology, n: int, keep: bool = False) -> tuple[float, list[dict[str, Any]]]:
    schema = AvroCodec("card_transaction").schema
    reader = fastavro.schemaless_reader
    consumer = make_consumer(topo.kafka, f"bench-bare-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topo.transactions_topic(topo.site(SITE))])
    out: list[dict[str, Any]] = []
    got = 0
    t0 = None
    deadline = time.monotonic() + 120
    try:
        while got < n and time.monotonic() < deadline:
            msgs = consumer.consume(BATCH, 0.1)
            if msgs and t0 is None:
                t0 = time.perf_counter()
            for m in msgs:
                if m.error() is not None:
                    continue
                buf = io.BytesIO(m.value())
                buf.seek(5)
                rec = reader(buf, schema, None)
                got += 1
                if keep:
                    out.append(rec)
        t1 = time.perf_counter()
    finally:
        consumer.close()
    if got < n or t0 is None:
        raise RuntimeError(f"bare consumer read {got} of {n} records")
    return got / (t1 - t0), out


# -- the full path ----------------------------------------------------------------------------------
def full(bootstrap: str, topic: str, state: Path, n: int, profile: bool = False) -> tuple[float, dict[str, Any]]:
    topo = topology(bootstrap, topic, state)
    proc = build_site(topo, SITE)
    marks: list[float] = []
    process = proc.process

    def timed(msgs: list) -> None:
        if not marks:
            marks.append(time.perf_counter())
        process(msgs)
        if len(marks) == 1:
            marks.append(0.0)
        marks[1] = time.perf_counter()

    proc.process = timed  # type: ignore[method-assign]
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    report = proc.run(max_records=n, timeout_s=600)
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, flat=True, flat_time="self")[:6000])
        print(profiler.output_text(unicode=False, color=False, short_mode=False)[:12000])
    if report.records != n or len(marks) < 2:
        raise RuntimeError(f"site processed {report.records} of {n} records ({report.dead_letters} dead letters)")
    info = {
        "updates": report.updates_published,
        "deep_steps": report.deep_steps,
        "auc": report.auc,
    }
    return n / (marks[1] - marks[0]), info


def featurize_paths(topo: Topology, records: list[dict[str, Any]], reps: int = 5) -> tuple[float, float]:
    """Records/s of ``Featurizer.transform`` (column path) and of its row-by-row path, same batches, interleaved."""
    columns = Featurizer(topo.model.features, topo.model.label)
    rows = Featurizer(topo.model.features, topo.model.label)
    rows._transform_columns = lambda _records: None  # type: ignore[method-assign]
    best = {"columns": 0.0, "rows": 0.0}
    for _ in range(reps):
        for name, f in (("columns", columns), ("rows", rows)):
            t0 = time.perf_counter()
            for i in range(0, len(records), BATCH):
                f.transform(records[i : i + BATCH])
            best[name] = max(best[name], len(records) / (time.perf_counter() - t0))
    return best["columns"], best["rows"]


def learner_only(topo_base: Topology, records: list[dict[str, Any]]) -> float:
    """The same learning and privacy work fed directly (SiteLearner, no Kafka, no decode)."""
    learner = build_learner(topo_base, SITE, persist=True)
    t0 = time.perf_counter()
    for i in range(0, len(records), BATCH):
        X, y, _status = learner.featurizer.transform(records[i : i + BATCH])
        learner.learn(X, y)
        learner.maybe_step()
        if learner.due():
            learner.make_update()
    return len(records) / (time.perf_counter() - t0)


# -- (b) plain river ------------------------------------------------------------------------------
def river_features(r: dict[str, Any]) -> dict[str, float]:
    """The fraud topology's declared features as a river dict (same transforms and constants)."""
    angle = 2 * math.pi * r["hour"] / 24
    return {
        "amount": math.log1p(r["amount"]) - 3.9,
        "hour_sin": math.sin(angle),
        "hour_cos": math.cos(angle),
        "distance_km": math.log1p(r["distance_km"]) - 1.8,
        "account_age_days": (math.log1p(r["account_age_days"]) - 6.5) / 1.2,
        f"merchant_category={r['merchant_category']}": 1.0,
        "card_present": 1.0 if r["card_present"] else 0.0,
    }


def river_loop(records: list[dict[str, Any]], pipeline: bool) -> tuple[float, float]:
    from river import compose, linear_model, optim

    lr = linear_model.LogisticRegression(optimizer=optim.SGD(0.02), intercept_lr=0.02)
    model = (compose.FuncTransformer(river_features) | lr) if pipeline else lr
    preds = np.empty(len(records))
    t0 = time.perf_counter()
    if pipeline:
        for i, r in enumerate(records):
            preds[i] = model.predict_proba_one(r)[True]
            if r["is_fraud"] is not None:
                model.learn_one(r, r["is_fraud"])
    else:
        for i, r in enumerate(records):
            x = river_features(r)
            preds[i] = model.predict_proba_one(x)[True]
            if r["is_fraud"] is not None:
                model.learn_one(x, r["is_fraud"])
    rate = len(records) / (time.perf_counter() - t0)
    tail = slice(-2000, None)
    y = np.array([bool(r["is_fraud"]) for r in records[tail]])
    return rate, auc(y, preds[tail])


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged)."""
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sp = p[order]
    i = 0
    while i < len(sp):
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k records, 1 repetition (CI smoke test)")
    ap.add_argument("--records", type=int, default=None, help="records in the topic (default 100000; quick 20000)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions, interleaved (default 3; quick 1)")
    ap.add_argument("--profile", action="store_true", help="profile one more full-path run with pyinstrument")
    ap.add_argument("--only-full", action="store_true", help="run only the full path once (for py-spy)")
    ap.add_argument("--bootstrap", default=None, help="use this Kafka instead of starting the embedded broker")
    args = ap.parse_args()
    n = args.records or (20_000 if args.quick else 100_000)
    reps = args.reps or (1 if args.quick else 3)
    header("site_ingest: records/s of the site's full path vs bare consume+decode and plain river", args)

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker()
        bootstrap = broker.start()
    try:
        with tempfile.TemporaryDirectory(prefix="streamfed-bench-") as tmp:
            state = Path(tmp)
            topic = f"bench.site_ingest.{uuid.uuid4().hex[:8]}"
            base = topology(bootstrap, topic, state / "base")
            fill_s = fill(base, n)
            print(f"filled {topic}: {n:,} records in {fill_s:.1f} s ({n / fill_s:,.0f}/s produce+encode)\n")
            if args.only_full:
                r, info = full(bootstrap, topic, state / "only", n)
                print(f"site full path: {r:,.0f} records/s ({info})")
                return
            rates: dict[str, list[float]] = {k: [] for k in ("bare", "full", "learner", "river", "river_pipe")}
            aucs: dict[str, float | None] = {}
            info: dict[str, Any] = {}
            records: list[dict[str, Any]] = []
            for rep in range(reps):
                r, got = bare(base, n, keep=not records)
                rates["bare"].append(r)
                records = records or got
                r, info = full(bootstrap, topic, state / f"full{rep}", n)
                rates["full"].append(r)
                aucs["full"] = info["auc"]
                rates["learner"].append(learner_only(topology(bootstrap, topic, state / f"lo{rep}"), records))
                r, aucs["river"] = river_loop(records, pipeline=False)
                rates["river"].append(r)
                r, aucs["river_pipe"] = river_loop(records, pipeline=True)
                rates["river_pipe"].append(r)
                print(
                    f"rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()), flush=True
                )
            print()
            full_rate = median(rates["full"])
            rows = [
                ["(a) bare consume + fastavro decode", median(rates["bare"]), spread(rates["bare"]), "-", "-"],
                [
                    "site full path (SiteProcessor.run)",
                    full_rate,
                    spread(rates["full"]),
                    f"{info['updates']} updates, {info['deep_steps']} deep steps",
                    aucs["full"],
                ],
                [
                    "  same learning, no Kafka (SiteLearner)",
                    median(rates["learner"]),
                    spread(rates["learner"]),
                    "-",
                    "-",
                ],
                [
                    "(b) plain river: dict features + LR",
                    median(rates["river"]),
                    spread(rates["river"]),
                    "-",
                    aucs["river"],
                ],
                [
                    "(b') river compose.Pipeline",
                    median(rates["river_pipe"]),
                    spread(rates["river_pipe"]),
                    "-",
                    aucs["river_pipe"],
                ],
            ]
            table(["variant", "records/s (median)", f"min..max of {reps}", "work done", "AUC (context)"], rows)
            print(
                "AUC (context only): the site's rolling prequential AUC of its local model; with no aggregator"
                " running, the local model restarts from version 0 after each of its releases, so it stays below"
                " river's, which never restarts.\n"
            )
            paired = lambda a, b: median([x / y for x, y in zip(rates[a], rates[b], strict=True)])  # noqa: E731
            ratio("site_full_path/bare_consume_decode", paired("full", "bare"), ">= 0.5")
            ratio("site_full_path/plain_river", paired("full", "river"))
            ratio("site_full_path/river_pipeline", paired("full", "river_pipe"))
            ratio("site_learner_no_kafka/plain_river", paired("learner", "river"))
            cols, rows_ = featurize_paths(base, records)
            print(f"\nfeaturize (validate + transform) alone: column path {cols:,.0f}/s, row path {rows_:,.0f}/s")
            ratio("featurize_column_path/row_path", cols / rows_)
            if args.profile:
                print("\n## pyinstrument profile of one full-path run (flat self time, then the call tree)\n")
                full(bootstrap, topic, state / "profile", n, profile=True)
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
