"""What only Apache Kafka shows: aborted transactions hidden from read_committed readers across many
aggregator kills, persistence across a broker kill -9, compaction of the models topic, and leader
failover in a three-broker cluster. Each test runs its own Apache Kafka (it kills and restarts it).

The invariants, everywhere: versions contiguous and never repeated (read_committed shows no aborted
version), every update on the updates topic in exactly one version or on the rejected topic with a
reason (nothing counted twice, nothing silently lost), the checkpoint at the last version with its
parameters, and every site's ledger and sequence numbers continuous across its restarts.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from streamfed.aggregation.checkpoint import Checkpoint
from streamfed.broker.kafka import KafkaCluster
from streamfed.kafka.topics import provision_topology
from streamfed.privacy.accountant import PrivacyLedger
from streamfed.privacy.signing import write_keypair
from streamfed.registry import read_topic
from streamfed.registry.reader import read_latest
from streamfed.serde.avro import AvroCodec
from tests.integration.helpers import start, stop, tail, wait_for
from tests.integration.lineage import read_lineage

pytestmark = [pytest.mark.kafka, pytest.mark.reliability, pytest.mark.real_kafka]

FAST = {
    "update": {"every_records": 400, "every_seconds": 1.0, "min_records": 50},
    "aggregation": {"buffer_size": 2},
    "model": {"deep": {"enabled": False}},
    "kafka": {"producer_settings": {"message.timeout.ms": 5000}},
}


@pytest.fixture
def kafka(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KafkaCluster]:
    """This test's own Apache Kafka: one broker, or ``request.param`` of them (indirect parametrize)."""
    with KafkaCluster(brokers=getattr(request, "param", 1), folder=tmp_path / "kafka") as k:
        yield k


@pytest.fixture
def bootstrap(kafka: KafkaCluster) -> str:
    return kafka.bootstrap


def _max_version(topo: Any) -> int:
    return max((r["version"] for r in read_lineage(topo)), default=0)


def _site(topo: Any, sid: str, path: Path, tmp_path: Path, n: int) -> subprocess.Popen[bytes]:
    args = ["site", "--topology", str(path), "--site", sid, "--summary-json", str(tmp_path / f"{sid}-{n}.json")]
    return start(args, tmp_path / "logs" / f"{sid}-{n}.log", tmp_path)


def _aggregator(path: Path, tmp_path: Path, n: int) -> subprocess.Popen[bytes]:
    return start(["aggregator", "--topology", str(path)], tmp_path / "logs" / f"agg-{n}.log", tmp_path)


def _federation(topo: Any, path: Path, tmp_path: Path) -> dict[str, subprocess.Popen[bytes]]:
    """Every site, the simulator and the aggregator as processes (keys written, topics created)."""
    provision_topology(topo)
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    procs = {s.id: _site(topo, s.id, path, tmp_path, 0) for s in topo.sites}
    procs["sim"] = start(
        ["simulate", "--topology", str(path), "--rate-scale", "0.5"], tmp_path / "logs" / "sim.log", tmp_path
    )
    procs["aggregator"] = _aggregator(path, tmp_path, 0)
    return procs


def _stop_federation(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, int]:
    """The simulator first, then the sites, the aggregator last (so it reads what they sent)."""
    sim, agg = procs.pop("sim"), procs.pop("aggregator")
    return {"sim": stop(sim), **{k: stop(p) for k, p in procs.items()}, "aggregator": stop(agg)}


def _published(topo: Any) -> list[tuple[str, int]]:
    """(site, sequence) of every update on the updates topic, each once however often it was sent."""
    codec = AvroCodec("model_update")
    got = {
        (r["site_id"], int(r["sequence"]))
        for _, r in read_topic(topo.kafka, topo.updates_topic, codec)
        if isinstance(r, dict)
    }
    return sorted(got)


def _rejected(topo: Any) -> list[tuple[str, int, str]]:
    updates = AvroCodec("model_update")
    out = []
    for _, rec in read_topic(topo.kafka, topo.rejected_topic, AvroCodec("dead_letter"), idle_s=1.0):
        if isinstance(rec, dict):
            upd = updates.decode(rec["value"])
            out.append((upd["site_id"], int(upd["sequence"]), rec["reason"]))
    return out


def _check_invariants(topo: Any, duplicates_allowed: set[tuple[str, int]] | None = None) -> dict[str, Any]:
    raw = read_lineage(topo)
    versions = [r["version"] for r in raw]
    assert versions == list(range(1, len(versions) + 1)), f"versions not contiguous or repeated: {versions}"
    counted = Counter((u["site_id"], int(u["sequence"])) for r in raw for u in r["updates"])
    twice = [k for k, n in counted.items() if n > 1]
    assert not twice, f"updates counted in two versions: {twice[:5]}"
    rejected = _rejected(topo)
    reasons = Counter(rejected)  # a re-sent copy may be rejected for another reason (replay), never twice alike
    assert max(reasons.values(), default=1) == 1, f"an update rejected twice: {reasons.most_common(3)}"
    # A re-sent copy of an update already in a version is rejected as a replay: both are fine.
    in_version = set(counted)
    rejected_only = {(s, q) for s, q, why in rejected if (s, q) not in in_version}
    published = set(_published(topo))
    unaccounted = published - in_version - rejected_only
    assert len(unaccounted) <= len(topo.sites) * 2, f"updates neither in a version nor rejected: {unaccounted}"
    loaded = Checkpoint(topo.home / "aggregator").load()
    assert loaded is not None
    committed, _ = loaded
    assert committed.version == versions[-1]
    assert raw[-1]["params_sha256"] == committed.params_sha256
    return {"versions": len(versions), "published": len(published), "rejected": Counter(w for *_, w in rejected)}


def _check_ledgers(topo: Any) -> None:
    """A site's ledger holds one release per sequence number it used, 1..n, across its restarts."""
    for s in topo.sites:
        ledger = PrivacyLedger(topo.privacy.delta, path=topo.home / "sites" / s.id / "ledger.jsonl")
        seqs = [r.sequence for r in ledger.releases]
        assert seqs == list(range(1, len(seqs) + 1)), f"{s.id}: ledger sequences {seqs[:10]}..."


def test_chaos_aggregator_and_sites_killed_at_random_moments(topology_factory, tmp_path: Path) -> None:
    """kill -9 of the aggregator eight times and of a site three times in one bounded run."""
    path, topo = topology_factory("fraud", FAST)
    procs = _federation(topo, path, tmp_path)
    rng = random.Random(11)
    runs = dict.fromkeys([s.id for s in topo.sites], 0)
    kills = {"aggregator": 0, "site": 0}
    try:
        wait_for(lambda: _max_version(topo) >= 2, 120, "the first versions")
        for n in range(1, 9):
            time.sleep(rng.uniform(0.5, 4.0))  # a random moment: mid-buffer, mid-transaction, idle
            procs["aggregator"].send_signal(signal.SIGKILL)
            procs["aggregator"].wait(10)
            kills["aggregator"] += 1
            if n in (2, 4, 7):  # and a site, at once
                sid = rng.choice(sorted(runs))
                procs[sid].send_signal(signal.SIGKILL)
                procs[sid].wait(10)
                kills["site"] += 1
                runs[sid] += 1
                procs[sid] = _site(topo, sid, path, tmp_path, runs[sid])
            before = _max_version(topo)
            procs["aggregator"] = _aggregator(path, tmp_path, n)
            wait_for(lambda b=before: _max_version(topo) >= b + 1, 120, f"a version after kill {n}")
        last = _max_version(topo)
        wait_for(lambda: _max_version(topo) >= last + 2, 120, "versions after the last kill")
    finally:
        codes = _stop_federation(procs)
    assert kills == {"aggregator": 8, "site": 3}
    assert all(c == 0 for c in codes.values()), f"{codes}\n{tail(tmp_path / 'logs' / 'agg-8.log')}"
    got = _check_invariants(topo)
    _check_ledgers(topo)
    assert got["versions"] >= 10


def test_broker_kill9_and_restart_with_its_data(kafka: KafkaCluster, topology_factory, tmp_path: Path) -> None:
    """The broker dies (kill -9) and comes back with its data: nothing lost, nothing counted twice,
    sites and aggregator resume on their own, and the version numbering goes on."""
    path, topo = topology_factory("fraud", FAST)
    procs = _federation(topo, path, tmp_path)
    try:
        wait_for(lambda: _max_version(topo) >= 3, 120, "three versions before the broker dies")
        before = read_lineage(topo)
        kafka.kill(1)
        time.sleep(3)
        t0 = time.monotonic()
        kafka.restart(1)
        wait_for(lambda: _max_version(topo) >= before[-1]["version"] + 3, 180, "versions after the restart")
        resumed_s = time.monotonic() - t0
        assert all(p.poll() is None for p in procs.values()), "a process died across the broker's restart"
    finally:
        codes = _stop_federation(procs)
    assert all(c == 0 for c in codes.values()), f"{codes}\n{tail(tmp_path / 'logs' / 'agg-0.log')}"
    after = read_lineage(topo)
    assert [r["version"] for r in after[: len(before)]] == [r["version"] for r in before]  # kept across the restart
    assert len({r["run_id"] for r in after}) == 1  # the same aggregator run went on
    _check_invariants(topo)
    _check_ledgers(topo)
    assert resumed_s < 180


def test_the_models_topic_is_compacted_and_a_late_reader_sees_the_latest(
    kafka: KafkaCluster, topology_factory, tmp_path: Path
) -> None:
    path, topo = topology_factory("fraud", FAST)
    provision_topology(topo)
    # Roll segments fast so that the cleaner has something to compact within the test.
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    SET = AlterConfigOpType.SET
    entries = {"segment.ms": "500", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0"}
    entries["delete.retention.ms"] = "100"
    res = ConfigResource(
        "topic",
        topo.models_topic,
        incremental_configs=[ConfigEntry(k, v, incremental_operation=SET) for k, v in entries.items()],
    )
    # Incremental: the topic keeps its other settings (cleanup.policy=compact among them).
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(30)
    procs = _federation(topo, path, tmp_path)
    codec = AvroCodec("model_version")
    try:
        wait_for(lambda: _max_version(topo) >= 12, 180, "twelve versions")

        def compacted() -> list | None:
            recs = [r["version"] for _, r in read_topic(topo.kafka, topo.models_topic, codec) if isinstance(r, dict)]
            # versions 1 and 2 gone: a read that stopped early does not count as compaction
            return recs if recs and 1 not in recs and 2 not in recs else None

        wait_for(compacted, 120, "the cleaner to compact the models topic", every_s=2.0)
    finally:
        codes = _stop_federation(procs)
    assert all(c == 0 for c in codes.values()), codes
    # A reader that starts now, after everything stopped: the latest version, and fewer records than versions.
    msgs = [(m, r) for m, r in read_topic(topo.kafka, topo.models_topic, codec) if isinstance(r, dict)]
    recs = [r for _, r in msgs]
    latest = read_latest(topo.kafka, topo.models_topic, codec, key=topo.model.name)
    assert latest is not None and latest["version"] == max(r["version"] for r in recs) == _max_version(topo)
    seen = [(m.offset(), m.key(), r["version"]) for m, r in msgs]
    assert len(recs) < latest["version"], f"older versions are still in the log: the topic did not compact: {seen}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kafka", [3], indirect=True, ids=["3-brokers"])
def test_three_brokers_leader_killed_and_one_frozen(kafka: KafkaCluster, topology_factory, tmp_path: Path) -> None:
    """Replication factor 3, min.insync.replicas 2: kill -9 the broker leading the updates and models
    partitions, versions go on within a minute; bring it back; then freeze (SIGSTOP) a broker for
    longer than the session timeouts, versions go on again."""
    over = {**FAST, "kafka": {**FAST["kafka"], "replication_factor": 3}}
    path, topo = topology_factory("fraud", over)
    procs = _federation(topo, path, tmp_path)
    timings: dict[str, float] = {}
    try:
        wait_for(lambda: _max_version(topo) >= 3, 180, "three versions")
        md = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10)
        leader = md.topics[topo.models_topic].partitions[0].leader
        before = _max_version(topo)
        kafka.kill(leader)
        t0 = time.monotonic()
        try:
            wait_for(lambda: _max_version(topo) >= before + 2, 120, f"versions with broker {leader} dead")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{tail(tmp_path / 'logs' / 'agg-0.log', 60)}") from None
        timings["leader killed"] = time.monotonic() - t0
        kafka.restart(leader)
        frozen = next(n.node_id for n in kafka.nodes if n.node_id != leader)
        before = _max_version(topo)
        kafka.pause(frozen)
        t0 = time.monotonic()
        time.sleep(8)  # longer than the brokers' 3 s session and the clients' 2 s consumer sessions
        wait_for(lambda: _max_version(topo) >= before + 2, 120, f"versions with broker {frozen} frozen")
        timings["broker frozen"] = time.monotonic() - t0
        kafka.resume(frozen)
        before = _max_version(topo)
        wait_for(lambda: _max_version(topo) >= before + 2, 120, "versions with every broker back")
        dead = [name for name, p in procs.items() if p.poll() is not None]
        logs = {name: tmp_path / "logs" / f"{'agg' if name == 'aggregator' else name}-0.log" for name in dead}
        logs = {name: (tmp_path / "logs" / "sim.log" if name == "sim" else log) for name, log in logs.items()}
        assert not dead, "died in the failovers: " + "\n".join(f"{n}:\n{tail(log)}" for n, log in logs.items())
    finally:
        codes = _stop_federation(procs)
    print(f"failover timings (s): {timings}")
    assert all(c == 0 for c in codes.values()), f"{codes}\n{tail(tmp_path / 'logs' / 'agg-0.log')}"
    _check_invariants(topo)
    _check_ledgers(topo)
    assert timings["leader killed"] < 120


_DIES_IN_A_TRANSACTION = """
import os, sys
from confluent_kafka import Consumer, Producer, TopicPartition
bootstrap, txn_id, group, topic, offset = sys.argv[1:6]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id})
p.init_transactions(30)
p.begin_transaction()
meta = Consumer({"bootstrap.servers": bootstrap, "group.id": group}).consumer_group_metadata()
p.send_offsets_to_transaction([TopicPartition(topic, 0, int(offset))], meta, 30)
print("in transaction", flush=True)
os._exit(0)  # like kill -9: the transaction stays open, its offsets pending in the group
"""


def test_a_restart_after_a_kill_inside_a_transaction_resumes_at_once(
    kafka: KafkaCluster, topology_factory, tmp_path: Path
) -> None:
    """The killed aggregator had sent its offsets into a transaction it never ended. A restart reads
    committed offsets only after its own producer has aborted that transaction (a stable offset read
    otherwise waits for the 60 s transaction timeout and the restart fails)."""
    import sys

    import numpy as np

    from streamfed.aggregation.build import build_aggregator
    from streamfed.aggregation.checkpoint import AggregatorState

    _, topo = topology_factory("fraud", FAST)
    provision_topology(topo)
    for s in topo.sites:
        write_keypair(topo.private_key_path(s), topo.public_key_path(s))
    agg = build_aggregator(topo)
    key = f"{topo.updates_topic}:0"
    committed = AggregatorState(0, agg.model.initial_params.astype(np.float32))
    pending = AggregatorState(1, agg.model.initial_params.astype(np.float32), offsets={key: 7})
    Checkpoint(topo.home / "aggregator").write(committed, pending)  # as if killed before the commit
    args = [kafka.bootstrap, agg.meta.producer_id, agg.group_id, topo.updates_topic, "7"]
    cmd = [sys.executable, "-c", _DIES_IN_A_TRANSACTION, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "in transaction" in out.stdout, out.stderr
    agg._open()  # raised "Failed to get committed offsets: Local: Timed out" when it read them first
    try:
        assert agg.state.version == 0  # the pending version's transaction never committed
    finally:
        agg._close()
