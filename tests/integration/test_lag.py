"""Consumer lag from list_offsets on Apache Kafka: committed against the last stable offset, so an
aborted transaction's offsets count and an open one's records do not yet; a partition the group
never committed counts from its start."""

from __future__ import annotations

import json
import subprocess

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streamfed.kafka.clients import site_group
from streamfed.kafka.lag import topology_lag
from streamfed.kafka.topics import provision_topology
from tests.integration.helpers import cli, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.real_kafka]


def test_lag_counts_committed_offsets_against_the_last_stable_offset(topology_factory, bootstrap: str) -> None:
    path, topo = topology_factory("fraud")
    provision_topology(topo)
    site = topo.sites[0]
    topic = topo.transactions_topic(site)
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    parts = sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
    probe.close()
    assert len(parts) >= 2, "the test needs two partitions"
    plain = Producer({"bootstrap.servers": bootstrap})
    sent = {p: 150 + 20 * p for p in parts}
    for p, n in sent.items():
        for i in range(n):
            plain.produce(topic, value=b"x%d" % i, partition=p)
    assert plain.flush(30) == 0
    txn = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topo.name}-lag"})
    txn.init_transactions(30)
    txn.begin_transaction()
    for _ in range(5):
        txn.produce(topic, value=b"aborted", partition=parts[0])
    txn.flush(30)  # written first (an abort purges what is still queued)
    txn.abort_transaction(30)  # 5 records and an abort marker: 6 offsets a reader skips
    txn.begin_transaction()
    for _ in range(7):
        txn.produce(topic, value=b"open", partition=parts[0])
    txn.flush(30)  # written, not committed: the last stable offset stays before them

    group = Consumer({"bootstrap.servers": bootstrap, "group.id": site_group(topo.name, site.id)})
    group.commit(offsets=[TopicPartition(topic, parts[0], 100)], asynchronous=False)
    group.close()
    try:
        want = {parts[0]: (100, sent[parts[0]] + 6, sent[parts[0]] + 6 - 100)}
        want.update({p: (None, sent[p], sent[p]) for p in parts[1:]})
        seen: list[object] = []

        def settled() -> dict | None:
            # The abort marker reaches the partition a moment after abort_transaction returns;
            # until then the aborted transaction is still open there and holds the stable offset.
            lags = topology_lag(topo)
            seen.append({p.partition: (p.committed, p.end, p.lag) for p in lags[site.id].partitions})
            return lags if seen[-1] == want else None

        try:
            lags = wait_for(settled, 30, "the lag to settle")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: want {want}, last seen {seen[-1] if seen else None}") from None
        assert lags[site.id].lag == sum(v[2] for v in want.values())
        assert all(g.lag == 0 for who, g in lags.items() if who != site.id)  # nothing sent to them
        out = subprocess.run(cli("lag", "--topology", str(path), "--json"), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[site.id]["lag"] == lags[site.id].lag
    finally:
        txn.abort_transaction(30)
