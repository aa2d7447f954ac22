"""A serving app outside the federation: scores a live transaction stream with the newest global
model version, hot-swapped as versions are committed.

It needs only the broker, the models topic and the model's name (the version records carry the
feature transforms), plus how to read its own input. With a running federation::

    python examples/serving_app.py --topology fraud --site bank-north --duration 60

``--topology`` only supplies those names; ``--bootstrap``, ``--models-topic``, ``--model``,
``--input-topic`` and ``--record-schema`` give them directly. Every second it prints the version in
use, the records scored since the first version arrived, those refused by the feature checks, and
the AUC on the labelled ones (``--json``: one object per line). ``--duration`` counts from the first
version.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import uuid

from confluent_kafka import Consumer

from streamfed.serde.avro import AvroCodec
from streamfed.serving import ModelSubscriber
from streamfed.site.served import RollingAUC


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", help="take the names below from this topology")
    ap.add_argument("--site", help="with --topology: score this site's transaction topic")
    ap.add_argument("--bootstrap")
    ap.add_argument("--models-topic")
    ap.add_argument("--model")
    ap.add_argument("--input-topic")
    ap.add_argument("--record-schema")
    ap.add_argument("--label", help="the records' label field (default: the version's)")
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.topology:
        from streamfed import load_topology

        topo = load_topology(a.topology, {"kafka": {"bootstrap_servers": a.bootstrap}} if a.bootstrap else None)
        site = topo.site(a.site) if a.site else topo.sites[0]
        a.bootstrap = topo.kafka.bootstrap_servers
        a.models_topic = a.models_topic or topo.models_topic
        a.model = a.model or topo.model.name
        a.input_topic = a.input_topic or topo.transactions_topic(site)
        a.record_schema = a.record_schema or topo.model.record_schema
    missing = [n for n in ("bootstrap", "models_topic", "model", "input_topic", "record_schema") if not getattr(a, n)]
    if missing:
        ap.error("give --topology or " + ", ".join("--" + n.replace("_", "-") for n in missing))

    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch, print the last line, exit 0
        signal.signal(sig, lambda *_: stop.update(now=True))
    codec = AvroCodec(a.record_schema)
    auc = RollingAUC(5000)  # exact ROC AUC over the last 5,000 labelled records
    scored = refused = 0
    source = Consumer(
        {
            "bootstrap.servers": a.bootstrap,
            "group.id": f"serving-app-{uuid.uuid4().hex[:8]}",  # its own reader: the sites keep theirs
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
        }
    )
    source.subscribe([a.input_topic])
    t0 = last = time.monotonic()
    with ModelSubscriber(a.bootstrap, a.model, a.models_topic) as sub:
        scorer = sub.wait_for_version(0, timeout_s=120.0)
        label = a.label or scorer.featurizer.label
        t0 = time.monotonic()  # --duration counts from the first version
        while not stop["now"] and (a.duration is None or time.monotonic() - t0 < a.duration):
            msgs = [m for m in source.consume(500, 0.2) if m.error() is None]
            records = []
            for m in msgs:
                try:
                    records.append(codec.decode(m.value()))
                except Exception:  # not our records: a serving app skips them
                    refused += 1
            if records:
                scorer = sub.current or scorer  # the version for this batch
                p, status = scorer.score(records)
                ys, ps = [], []
                for rec, prob, ok in zip(records, p, status, strict=True):
                    if ok is not True:
                        refused += 1
                        continue
                    scored += 1
                    if rec.get(label) is not None:
                        ys.append(float(rec[label]))
                        ps.append(float(prob))
                if ys:
                    auc.update(ys, ps)
            if time.monotonic() - last >= 1.0 or stop["now"]:
                last = time.monotonic()
                now = sub.current
                row = {
                    "t": round(last - t0, 1),
                    "version": None if now is None else now.version,
                    "scored": scored,
                    "refused": refused,
                    "auc": None if (got := auc.get_auc()) is None else round(got, 4),
                }
                print(json.dumps(row) if a.json else " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
