"""Java apps with nothing but Apache Avro, kafka-clients and the project's .avsc files talk to a live
federation: a producer's committed transactions are what a site learns (its aborted one is not),
and a consumer decodes every model version the aggregator commits, byte for byte.

The programs are examples/java (built by examples/java/build with Maven and javac, Java 17).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from streamfed.cli.config import ensure_keys
from streamfed.kafka.clients import make_consumer
from streamfed.kafka.topics import provision_topology
from streamfed.registry import read_topic
from streamfed.serde.avro import AvroCodec
from streamfed.site.build import build_site
from streamfed.topology import load_topology
from streamfed.topology.loader import REPO_ROOT, SCHEMA_DIR
from tests.integration.helpers import start, stop, tail

# Apache Kafka only: on the embedded tansu broker, kafka-clients 4.4's InitProducerId never completes
# (its transactions time out after 60 s; librdkafka's work there).
pytestmark = [pytest.mark.kafka, pytest.mark.real_kafka]

JAVA = REPO_ROOT / "examples" / "java"
COMMITTED, ABORTED = 3000, 500


@pytest.fixture(scope="module")
def classpath() -> str:
    if shutil.which("mvn") is None or shutil.which("javac") is None:
        pytest.skip("needs Maven and a JDK 17+ (CI installs both)")
    res = subprocess.run([str(JAVA / "build")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


def _java(cp: str, main: str, *args: str, timeout: float = 180) -> str:
    res = subprocess.run(["java", "-cp", cp, f"streamfed.interop.{main}", *args], capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    assert res.returncode == 0, f"{main}: {res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _count(topo, topic: str, isolation: str) -> int:
    """Messages a consumer with ``isolation`` sees in ``topic`` (read to the end)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    c = make_consumer(topo.kafka, None, **{"isolation.level": isolation, "enable.partition.eof": True})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    n, done = 0, set()
    while len(done) < len(parts):
        for m in c.consume(500, 1.0):
            if m.error() is None:
                n += 1
            elif m.error().code() == KafkaError._PARTITION_EOF:
                done.add(m.partition())
    c.close()
    return n


def test_a_java_producer_feeds_a_site_and_a_java_consumer_reads_every_version(
    classpath: str, topology_factory, bootstrap: str, tmp_path: Path
) -> None:
    path, topo = topology_factory("fraud", {"aggregation": {"buffer_size": 2}})
    provision_topology(topo)
    site = topo.sites[0]
    topic = topo.transactions_topic(site)
    out = _java(classpath, "TransactionsProducer", bootstrap, topic, str(SCHEMA_DIR / "card_transaction.avsc"),
                site.id, str(COMMITTED), str(ABORTED))  # fmt: skip
    assert json.loads(out) == {"committed": COMMITTED, "aborted": ABORTED}
    # every record of the aborted transaction reached the log (the producer flushes before it aborts)
    assert _count(topo, topic, "read_uncommitted") == COMMITTED + ABORTED
    assert _count(topo, topic, "read_committed") == COMMITTED

    state = tmp_path / "state"
    ensure_keys(str(path), state)
    agg = start(["aggregator", "--topology", str(path), "--bootstrap", bootstrap, "--state-dir", str(state),
                 "--max-versions", "2"], tmp_path / "aggregator.log", tmp_path)  # fmt: skip
    try:
        proc = build_site(load_topology(path, {"state_dir": str(state), "kafka": {"bootstrap_servers": bootstrap}}),
                          site.id)  # fmt: skip
        report = proc.run(max_records=COMMITTED, timeout_s=120)
        # every committed Java record decoded, validated and learnt; none of the aborted ones
        assert report.records == COMMITTED and report.dead_letters == 0, report.to_json()
        assert report.labelled == COMMITTED and report.updates_published >= 4 and report.auc is not None
        assert agg.wait(120) == 0, tail(tmp_path / "aggregator.log")
    finally:
        stop(agg)

    committed = {r["version"]: r for _, r in read_topic(topo.kafka, topo.models_topic, AvroCodec("model_version"))}
    assert {0, 1, 2} <= set(committed)
    lines = _java(classpath, "ModelsReader", bootstrap, topo.models_topic, str(SCHEMA_DIR / "model_version.avsc"),
                  str(len(committed)), "60")  # fmt: skip
    seen = [json.loads(line) for line in lines.splitlines()]
    assert [s["version"] for s in seen] == sorted(committed)
    for s in seen:
        v = committed[s["version"]]
        assert s["sha256_ok"] and s["params_sha256"] == v["params_sha256"] and s["model"] == topo.model.name
        assert s["num_params"] == len(v["params"]) // 4
