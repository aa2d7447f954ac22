"""A StreamFed site embedded in a Faust app (examples/faust_app.py) against a real aggregator.

The app must dead-letter and count bad records, publish updates the aggregator accepts (signed,
clipped, noised, in the ledger) and rebase on the versions the aggregator makes of them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("faust", reason="needs the faust extra: pip install 'streamfed[faust]'")

from prometheus_client.parser import text_string_to_metric_families

from streamfed.kafka import provision_topology
from streamfed.privacy.accountant import PrivacyLedger, resolve_noise_multiplier
from streamfed.privacy.signing import UpdateVerifier, load_public_key, write_keypair
from streamfed.serde.avro import AvroCodec
from streamfed.sources import RecordProducer, TransactionSimulator
from tests.integration.helpers import dead_letters, read_json, site_updates, start, stop, tail, wait_for

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "faust_app.py"
FAST = {"update": {"every_records": 1000, "every_seconds": 1.0, "min_records": 50}, "aggregation": {"buffer_size": 1}}
RECORDS = 2000
MALFORMED = b"\x00not an avro record"


def _metrics(port: int) -> dict[tuple[str, str], float]:
    """``(sample name, reason label or "")`` -> value, from the app's /metrics; empty until it serves them."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {
        (s.name, s.labels.get("reason", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("streamfed_site_")
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_faust_app_learns_dead_letters_publishes_and_rebases(topology_factory, tmp_path: Path) -> None:
    path, topo = topology_factory("fraud", FAST)
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    site = topo.site("bank-north")
    provision_topology(topo)
    topic = topo.transactions_topic(site)
    assert site.simulator is not None
    simulator = TransactionSimulator(site.id, site.simulator)
    out = RecordProducer(topo.kafka, topo.model.record_schema, topo.name, "transaction_id")
    records = simulator.batch(RECORDS, t=0.0, now_ms=int(time.time() * 1000))
    labelled = sum(r["is_fraud"] is not None for r in records)  # an update counts labelled examples
    out.send(topic, site.id, records)
    out.raw(topic, b"malformed", MALFORMED)  # does not decode
    bad_hour = {**records[0], "hour": 99, "transaction_id": f"{records[0]['transaction_id']}-bad"}  # a new id
    out.raw(topic, b"bad-hour", AvroCodec(topo.model.record_schema).encode(bad_hour))
    assert out.flush() == 0

    logs = tmp_path / "logs"
    agg_args = ["aggregator", "--topology", str(path), "--summary-json", str(tmp_path / "agg.json")]
    agg = start(agg_args, logs / "agg.log", tmp_path)
    port = _free_port()
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        STREAMFED_TOPOLOGY=str(path),
        STREAMFED_SITE=site.id,
        STREAMFED_FAUST_APP_ID=f"faust-{uuid.uuid4().hex[:10]}",
        STREAMFED_METRICS_PORT=str(port),
    )
    log = logs / "faust.log"
    with open(log, "ab") as sink:
        # cwd: Faust keeps its data directory (<app id>-data) in the working directory.
        app = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "worker", "-l", "info"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    sent = {"records": RECORDS, "labelled": labelled}
    records_total = ("streamfed_site_records_total", "")

    def rebased() -> list[dict[str, Any]] | None:
        """The updates once one is based on a global version; until then more records close more windows."""
        ups = site_updates(topo, site.id)
        if any(u["base_version"] >= 1 for u in ups):
            return ups
        if ups:
            extra = simulator.batch(200, t=1.0, now_ms=int(time.time() * 1000))
            out.send(topic, site.id, extra)
            assert out.flush() == 0
            sent["records"] += len(extra)
            sent["labelled"] += sum(r["is_fraud"] is not None for r in extra)
        return None

    try:
        wait_for(
            lambda: _metrics(port).get(records_total, 0) >= RECORDS,
            120,
            f"the Faust app to learn the {RECORDS} records",
        )
        updates = wait_for(rebased, 120, "an update based on a global version (the app rebased)", every_s=1.0)
        counted = wait_for(
            lambda: (m := _metrics(port)).get(records_total) == sent["records"] and m,
            60,
            "every record sent learned, once",
        )
        assert app.poll() is None and agg.poll() is None
    except AssertionError:
        print(tail(log, 80), tail(logs / "agg.log", 40), sep="\n-- aggregator --\n")
        raise
    finally:
        code = stop(app)
        agg_code = stop(agg)
    assert code == 0, tail(log)
    assert agg_code == 0, tail(logs / "agg.log")

    # Bad records: dead-lettered with their reason and counted (the good ones were all learned, above).
    assert counted[("streamfed_site_dead_letters_total", "decode")] == 1
    assert counted[("streamfed_site_dead_letters_total", "out_of_range")] == 1
    dead = {rec["reason"]: rec for rec in dead_letters(topo)}
    assert set(dead) == {"decode", "out_of_range"}, dead
    for reason, key in (("decode", b"malformed"), ("out_of_range", b"bad-hour")):
        letter = dead[reason]
        assert (letter["component"], letter["site_id"], letter["source_topic"], letter["key"]) == (
            "site",
            site.id,
            topic,
            key,
        )
        assert letter["detail"] and letter["offset"] >= 0 and 0 <= letter["partition"] < topo.kafka.partitions
    assert dead["decode"]["value"] == MALFORMED
    assert "hour" in dead["out_of_range"]["detail"]

    # Updates: signed, clipped and noised as the topology says, accounted in the site's ledger, and
    # accepted by the aggregator, whose versions the app rebased on.
    seen, updates = len(updates), site_updates(topo, site.id)
    assert len(updates) >= max(seen, 2)
    verifier = UpdateVerifier({site.id: [load_public_key(topo.public_key_path(site))]})
    for rec in updates:
        verifier.verify(rec)  # raises SignatureError on a bad signature
    assert [r["sequence"] for r in updates] == list(range(1, len(updates) + 1))
    assert {(r["topology"], r["clip_norm"]) for r in updates} == {(topo.name, topo.privacy.clip_norm)}
    sigma = resolve_noise_multiplier(topo.privacy)
    assert all(r["noise_std"] == pytest.approx(sigma * topo.privacy.clip_norm) and r["noise_std"] > 0 for r in updates)
    ledger = PrivacyLedger(topo.privacy.delta, None, topo.home / "sites" / site.id / "ledger.jsonl")
    assert [r.sequence for r in ledger.releases] == [r["sequence"] for r in updates]
    assert ledger.spent == pytest.approx(updates[-1]["epsilon_spent"])
    assert sum(r["num_examples"] for r in updates) <= sent["labelled"]  # no record in two windows
    assert updates[-1]["base_version"] >= 1 and counted[("streamfed_site_base_version", "")] >= 1
    summary = read_json(tmp_path / "agg.json")
    assert summary["rejected_reasons"] == {}, summary
    assert summary["accepted"] >= seen and summary["version"] >= 1
