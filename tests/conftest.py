"""Fixtures: a real Kafka-protocol broker and uniquely named topologies whose topics are deleted after.

The broker: ``STREAMFED_BOOTSTRAP`` if set (any Kafka); else ``STREAMFED_BROKER``: ``tansu`` (the
default: the embedded broker, no JVM) or ``kafka`` (Apache Kafka 4.x in KRaft mode, from the jars
``deploy/kafka/fetch`` resolves, started once for the session). Tests marked ``real_kafka`` need Apache
Kafka's semantics (aborted transactions hidden from read_committed readers, persistence, compaction,
replication) and are skipped on tansu.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamfed.topology import Topology, load_topology
from streamfed.topology.loader import _merge, resolve_topology_path

BROKERS = ("tansu", "kafka")


def broker_kind() -> str:
    """``external`` (STREAMFED_BOOTSTRAP), ``kafka`` or ``tansu`` (STREAMFED_BROKER, default tansu)."""
    if os.environ.get("STREAMFED_BOOTSTRAP"):
        return "external"
    kind = os.environ.get("STREAMFED_BROKER", "tansu")
    if kind not in BROKERS:
        raise pytest.UsageError(f'STREAMFED_BROKER="{kind}"; valid: {", ".join(BROKERS)}')
    return kind


def is_real_kafka() -> bool:
    """Apache Kafka semantics: the session's Apache Kafka, or any Kafka STREAMFED_BOOTSTRAP names."""
    return broker_kind() in ("kafka", "external")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_real_kafka():
        return
    skip = pytest.mark.skip(reason="needs Apache Kafka semantics: run with STREAMFED_BROKER=kafka")
    for item in items:
        if item.get_closest_marker("real_kafka") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """The session's broker address (see the module docstring)."""
    kind = broker_kind()
    if kind == "external":
        yield os.environ["STREAMFED_BOOTSTRAP"]
        return
    if kind == "kafka":
        from streamfed.broker.kafka import KafkaCluster

        with KafkaCluster(brokers=1) as kafka:
            yield kafka.bootstrap
        return
    from streamfed.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def real_kafka() -> bool:
    return is_real_kafka()


TopologyFactory = Callable[..., tuple[Path, Topology]]


@pytest.fixture
def topology_factory(bootstrap: str, tmp_path: Path) -> Iterator[TopologyFactory]:
    """Write a copy of a shipped topology under a unique name (so unique topics) into ``tmp_path``."""
    made: list[Topology] = []

    def make(base: str = "fraud", overrides: dict[str, Any] | None = None) -> tuple[Path, Topology]:
        src = resolve_topology_path(base)
        data = yaml.safe_load(src.read_text())
        for site in data.get("sites", []):
            source = site.get("source")
            if source and not Path(source["path"]).is_absolute():
                source["path"] = str((src.resolve().parent / source["path"]).resolve())
        data = _merge(data, overrides or {})
        data["name"] = f"t{uuid.uuid4().hex[:10]}"
        data.setdefault("kafka", {})["bootstrap_servers"] = bootstrap
        data["state_dir"] = str(tmp_path / "state")
        path = tmp_path / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        topo = load_topology(path)
        made.append(topo)
        return path, topo

    yield make
    from streamfed.kafka.clients import admin_client
    from streamfed.kafka.topics import topic_plan

    for topo in made:  # clean-up is best effort: a topic never created is fine to skip
        admin = admin_client(topo.kafka)
        for fut in admin.delete_topics([t.topic for t in topic_plan(topo)], operation_timeout=10).values():
            with contextlib.suppress(Exception):
                fut.result(10)
