"""The broker goes away mid-run: sites keep learning, keep their undelivered updates and publish them
afterwards with their original sequence numbers; producers rebuild themselves; the aggregator goes on.

These tests run their own embedded broker (they freeze and restart it), so they skip when
``STREAMFED_BOOTSTRAP`` points at a broker the test cannot control.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamfed.broker import EmbeddedBroker
from streamfed.kafka.topics import provision_topology
from streamfed.privacy.signing import write_keypair
from streamfed.registry import read_topic
from streamfed.serde.avro import AvroCodec
from tests.integration.helpers import read_json, start, stop, tail, wait_for
from tests.integration.lineage import check_lineage, read_lineage

pytestmark = [pytest.mark.kafka, pytest.mark.reliability]

FAST = {
    "update": {"every_records": 600, "every_seconds": 1.0, "min_records": 50},
    "aggregation": {"buffer_size": 2},
    "model": {"deep": {"enabled": False}},
    # Give an undelivered message up after 3 s, so an outage of a few seconds exercises the kept updates.
    "kafka": {"producer_settings": {"message.timeout.ms": 3000}},
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    if os.environ.get("STREAMFED_BOOTSTRAP"):
        pytest.skip("needs a broker the test can freeze and restart (the embedded one)")
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as b:
        yield b


@pytest.fixture
def bootstrap(broker: EmbeddedBroker) -> str:
    return broker.bootstrap


def _max_version(topo) -> int:
    return max((r["version"] for r in read_lineage(topo)), default=0)


def _start_all(topo, path: Path, tmp_path: Path) -> dict:
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    logs = tmp_path / "logs"
    args = ["--topology", str(path)]
    procs = {
        s.id: start(
            ["site", *args, "--site", s.id, "--summary-json", str(tmp_path / f"{s.id}.json")],
            logs / f"{s.id}.log",
            tmp_path,
        )
        for s in topo.sites
    }
    procs["aggregator"] = start(
        ["aggregator", *args, "--summary-json", str(tmp_path / "agg.json")], logs / "agg.log", tmp_path
    )
    procs["sim"] = start(["simulate", *args, "--rate-scale", "0.3"], logs / "sim.log", tmp_path)
    return procs


def _stop_all(procs: dict) -> dict[str, int]:
    codes = {"sim": stop(procs.pop("sim"))}
    agg = procs.pop("aggregator")
    codes.update({name: stop(p) for name, p in procs.items()})
    codes["aggregator"] = stop(agg)
    return codes


def test_broker_outage_sites_keep_their_updates_and_publish_them_after(
    broker: EmbeddedBroker, topology_factory, tmp_path: Path, real_kafka: bool
) -> None:
    path, topo = topology_factory("fraud", FAST)
    procs = _start_all(topo, path, tmp_path)
    try:
        wait_for(lambda: _max_version(topo) >= 3, 120, "three versions before the outage")
        broker.pause()  # the broker stops answering; what it holds is kept
        time.sleep(10)  # the fault: sites keep learning and publishing into librdkafka meanwhile
        assert all(p.poll() is None for p in procs.values()), "a process died while the broker was away"
        broker.resume()
        after = _max_version(topo)
        wait_for(lambda: _max_version(topo) >= after + 4, 120, "four versions after the outage")
    finally:
        codes = _stop_all(procs)
    assert all(c == 0 for c in codes.values()), f"{codes}\n{tail(tmp_path / 'logs' / 'agg.log')}"
    pairs = check_lineage(read_lineage(topo), real_kafka)
    # A transaction that failed in the outage rolls the aggregator back to its last commit; the
    # backlog it then reads may hold updates older than max_staleness, rejected as stale by policy.
    stale = _rejected(topo, "stale")
    sites = {s.id: read_json(tmp_path / f"{s.id}.json") for s in topo.sites}
    for sid, summary in sites.items():
        assert summary["updates_dropped"] == 0
        assert summary["updates_pending"] == 0
        seqs = sorted(q for s, q in pairs if s == sid)
        # Nothing lost: every sequence up to the newest in a version is in exactly one version, or
        # was rejected as stale.
        accounted = sorted(set(seqs) | {q for s, q in stale if s == sid and q < max(seqs)})
        assert accounted == list(range(1, len(accounted) + 1)), f"{sid}: a gap in {seqs} (stale: {stale})"
        assert len(seqs) >= 3
    agg = read_json(tmp_path / "agg.json")
    # Re-sent copies of updates that had arrived are recognised by their sequence, not counted again.
    assert set(agg["rejected_reasons"]) <= {"replay", "stale"}, agg["rejected_reasons"]


def _rejected(topo, reason: str) -> set[tuple[str, int]]:
    """(site, sequence) of the updates the aggregator rejected for ``reason``, from the rejected topic."""
    updates = AvroCodec("model_update")
    out = set()
    for _, rec in read_topic(topo.kafka, topo.rejected_topic, AvroCodec("dead_letter"), idle_s=1.0):
        if isinstance(rec, dict) and rec["reason"] == reason:
            upd = updates.decode(rec["value"])
            out.add((upd["site_id"], int(upd["sequence"])))
    return out


def test_broker_restart_producers_rebuild_and_versions_continue(
    broker: EmbeddedBroker, topology_factory, tmp_path: Path, real_kafka: bool
) -> None:
    """The embedded broker keeps everything in memory (tansu's memory storage; its other engines
    need PostgreSQL or S3): a restart brings back an empty cluster with a new id. What the old
    broker held is gone, but nothing may be counted twice, no version number reused, and every
    site's updates must reach versions again."""
    path, topo = topology_factory("fraud", FAST)
    procs = _start_all(topo, path, tmp_path)
    try:
        wait_for(lambda: _max_version(topo) >= 3, 120, "three versions before the restart")
        before = read_lineage(topo)
        broker.restart()
        provision_topology(topo)  # a new, empty cluster needs its topics (the compose topic-init job's role)

        def new_versions() -> list | None:
            raw = read_lineage(topo)
            sites = {u["site_id"] for r in raw for u in r["updates"]}
            return raw if len(raw) >= 3 and sites == {s.id for s in topo.sites} else None

        wait_for(new_versions, 180, "versions with every site's updates on the restarted broker")
        assert all(p.poll() is None for p in procs.values()), "a process died across the restart"
    finally:
        codes = _stop_all(procs)
    assert all(c == 0 for c in codes.values()), f"{codes}\n{tail(tmp_path / 'logs' / 'agg.log')}"
    after = read_lineage(topo)
    check_lineage(after, real_kafka)
    assert {r["run_id"] for r in after} == {r["run_id"] for r in before}  # the same aggregator run went on
    assert min(r["version"] for r in after) > max(r["version"] for r in before), "a version number was reused"
    pairs = [(u["site_id"], u["sequence"]) for r in before + after for u in r["updates"]]
    assert len(pairs) == len(set(pairs)), "an update was counted in two versions"
    sites = {s.id: read_json(tmp_path / f"{s.id}.json") for s in topo.sites}
    assert all(s["producer_recreations"] >= 1 for s in sites.values()), {
        k: v["producer_recreations"] for k, v in sites.items()
    }
