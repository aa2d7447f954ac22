"""A StreamFed site as a PyFlink job (streamfed.integrations.flink) against a real aggregator.

The job reads the site's topic with Flink's KafkaSource (the Kafka SQL connector's jar, from Maven
Central) or data-lake files with Flink's FileSource, dead-letters and counts bad records, publishes
updates the aggregator accepts and rebases on its versions. A failure in the middle makes Flink
restore the job from its last checkpoint: every record must still be learnt once, and no record
may reach more releases than the ledger accounts for.

PyFlink is the ``[flink]`` extra, which CI installs in a venv of its own (its Apache Beam pins an
older numpy); where it is missing these tests skip, unless ``STREAMFED_REQUIRE_FLINK=1`` (CI), where
they fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("STREAMFED_REQUIRE_FLINK") != "1":
    pytest.importorskip("pyflink", reason="needs the flink extra: pip install 'streamfed[flink]'")

from streamfed.integrations.flink import RELEASED_FILE, ReleasedMarks, site_job
from streamfed.kafka import provision_topology
from streamfed.privacy.accountant import PrivacyLedger
from streamfed.privacy.signing import UpdateVerifier, load_public_key, write_keypair
from streamfed.registry import read_topic
from streamfed.serde.avro import AvroCodec
from streamfed.sources import RecordProducer, TransactionSimulator
from tests.integration.helpers import dead_letters, read_json, site_updates, start, stop, tail, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.flink]

FAST = {
    "update": {"every_records": 1000, "every_seconds": 1.0, "min_records": 50},
    "aggregation": {"buffer_size": 1},
}
MALFORMED = b"\x00not an avro record"


def _setup(topology_factory: Any) -> tuple[Path, Any, Any]:
    path, topo = topology_factory("fraud", FAST)
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    provision_topology(topo)
    return path, topo, topo.site("bank-north")


def _check_updates(topo: Any, site: Any, labelled: int) -> list[dict[str, Any]]:
    """Signed, in the ledger, each sequence once, and no record in two windows."""
    updates = site_updates(topo, site.id)
    assert updates, "the job published no update"
    verifier = UpdateVerifier({site.id: [load_public_key(topo.public_key_path(site))]})
    for rec in updates:
        verifier.verify(rec)
    seqs = [r["sequence"] for r in updates]
    assert seqs == sorted(set(seqs)), seqs  # in order, none twice
    ledger = PrivacyLedger(topo.privacy.delta, None, topo.home / "sites" / site.id / "ledger.jsonl")
    assert set(seqs) <= {r.sequence for r in ledger.releases}
    # window_sum: each record in at most one window, across the restore too
    assert sum(r["num_examples"] for r in updates) <= labelled
    return updates


def test_kafka_job_learns_dead_letters_publishes_rebases_and_survives_a_restore(
    topology_factory: Any, tmp_path: Path
) -> None:
    path, topo, site = _setup(topology_factory)
    topic = topo.transactions_topic(site)
    assert site.simulator is not None
    out = RecordProducer(topo.kafka, topo.model.record_schema, topo.name, "transaction_id")
    records = TransactionSimulator(site.id, site.simulator).batch(20_000, t=0.0)
    labelled = sum(r["is_fraud"] is not None for r in records)
    out.raw(topic, b"malformed", MALFORMED)
    bad_hour = {**records[0], "hour": 99, "transaction_id": f"{records[0]['transaction_id']}-bad"}
    out.raw(topic, b"bad-hour", AvroCodec(topo.model.record_schema).encode(bad_hour))
    out.send(topic, site.id, records)
    assert out.flush() == 0

    logs = tmp_path / "logs"
    agg = start(
        ["aggregator", "--topology", str(path), "--summary-json", str(tmp_path / "agg.json")],
        logs / "agg.log",
        tmp_path,
    )
    try:
        # checkpoints every 200 ms, snapshots of the learner every 2,000 records: the failure after
        # 12,000 records comes after both, so the restore loads a snapshot and learns records again
        job = site_job(path, site.id, bounded=True, checkpoint_ms=200, snapshot_records=2000, fail_once_after=12_000)
        report = job.execute()
        # a version made of the job's updates; a second, short job then rebases on it
        wait_for(lambda: _made_versions(topo), 60, "a global version of the job's updates")
        more = TransactionSimulator(site.id, site.simulator).batch(3000, t=100.0)
        out.send(topic, site.id, more)
        assert out.flush() == 0
        second = site_job(path, site.id, bounded=True).execute()
    finally:
        agg_code = stop(agg)
    assert agg_code == 0, tail(logs / "agg.log")

    assert (tmp_path / "state").exists()
    assert report["restores"] == 1 and report["replayed"] > 0, report  # the restore path ran
    assert report["records"] == len(records), report  # every record learnt once, across the restore
    assert report["dead_letters"] == 2 and report["dead_letter_reasons"] == {"decode": 1, "out_of_range": 1}
    dead = {rec["reason"]: rec for rec in dead_letters(topo)}
    assert set(dead) == {"decode", "out_of_range"}, dead
    assert (dead["decode"]["source_topic"], dead["decode"]["key"], dead["decode"]["value"]) == (
        topic,
        b"malformed",
        MALFORMED,
    )
    assert "hour" in dead["out_of_range"]["detail"]

    # the second job starts from the offsets Flink committed: it learns the new records (and at
    # most those since the last checkpoint again), rebases on the aggregator's versions
    assert second["restores"] == 0 and second["records"] >= len(more), second
    assert second["rebases"] >= 1 and second["base_version"] >= 1, second
    updates = _check_updates(topo, site, labelled + len(more))
    assert any(u["base_version"] >= 1 for u in updates)
    marks = json.loads((topo.home / "sites" / site.id / RELEASED_FILE).read_text())["released"]
    assert set(marks) <= {str(p) for p in range(topo.kafka.partitions)} and marks
    summary = read_json(tmp_path / "agg.json")
    assert summary["rejected_reasons"] == {}, summary
    assert summary["accepted"] >= 1 and summary["version"] >= 1


def _versions(topo: Any) -> list[Any]:
    return read_topic(topo.kafka, topo.models_topic, AvroCodec("model_version"), idle_s=1.0)


def _made_versions(topo: Any) -> list[Any]:
    """Versions 1 and later: the aggregator announces version 0 when it starts, before any update."""
    return [v for _, v in _versions(topo) if isinstance(v, dict) and v["version"] >= 1]


def test_file_job_learns_json_lines_and_dead_letters_bad_lines(topology_factory: Any, tmp_path: Path) -> None:
    path, topo, site = _setup(topology_factory)
    assert site.simulator is not None
    records = TransactionSimulator(site.id, site.simulator).batch(3000, t=0.0)
    lake = tmp_path / "lake"
    lake.mkdir()
    lines = [json.dumps(r) for r in records]
    lines.insert(10, "{not json")
    missing = {k: v for k, v in records[0].items() if k != "amount"}
    lines.insert(20, json.dumps({**missing, "transaction_id": "missing-amount"}))
    (lake / "part-0.jsonl").write_text("\n".join(lines[:1500]) + "\n")
    (lake / "part-1.jsonl").write_text("\n".join(lines[1500:]) + "\n")

    logs = tmp_path / "logs"
    agg = start(
        ["aggregator", "--topology", str(path), "--summary-json", str(tmp_path / "agg.json")],
        logs / "agg.log",
        tmp_path,
    )
    try:
        report = site_job(path, site.id, files=[lake], bounded=True, metrics_port=0).execute()
        wait_for(lambda: _made_versions(topo), 60, "a global version of the job's updates")
    finally:
        agg_code = stop(agg)
    assert agg_code == 0, tail(logs / "agg.log")
    assert report["records"] == len(records), report
    assert report["dead_letter_reasons"] == {"decode": 2}, report
    dead = dead_letters(topo)
    assert len(dead) == 2 and all(d["source_topic"] == f"file:{lake.resolve()}" for d in dead), dead
    assert {d["value"] for d in dead} == {lines[10].encode(), lines[20].encode()}
    assert any("amount" in d["detail"] for d in dead), dead
    _check_updates(topo, site, sum(r["is_fraud"] is not None for r in records))
    summary = read_json(tmp_path / "agg.json")
    assert summary["rejected_reasons"] == {} and summary["accepted"] >= 1, summary


def test_released_marks_are_durable_and_only_move_forward(tmp_path: Path) -> None:
    path = tmp_path / RELEASED_FILE
    marks = ReleasedMarks(path)
    assert marks.allows(0, 0)
    marks.advance({"0": 41, "2": 7})
    marks.advance({"0": 30})  # never back
    again = ReleasedMarks(path)
    assert again.marks == {"0": 41, "2": 7}
    assert not again.allows(0, 41) and again.allows(0, 42) and again.allows(1, 0) and not again.allows(2, 7)


def test_flink_benchmark_quick_prints_the_flink_to_site_ratio(bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.test_benchmarks import run_quick

    # the jobs above ran in this process, and PyFlink left its gateway's settings in the environment:
    # a child that inherits them takes itself for a Python worker and refuses to start a gateway
    for name in [k for k in os.environ if k.startswith("PYFLINK_GATEWAY")]:
        monkeypatch.delenv(name)

    ratios = run_quick("flink_site.py", "--bootstrap", bootstrap, timeout=280)
    assert "flink/site" in ratios and float(ratios["flink/site"]) > 0, ratios
