"""Create a topology's topics with the AdminClient (idempotent)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from streamfed.errors import BrokerError
from streamfed.kafka.clients import admin_client
from streamfed.topology.spec import Topology

log = logging.getLogger(__name__)


def topic_plan(topo: Topology) -> list[NewTopic]:
    k = topo.kafka
    rf = k.replication_factor
    big = {"max.message.bytes": str(k.max_message_bytes)}
    topics = [NewTopic(topo.transactions_topic(s), k.partitions, rf) for s in topo.sites]
    topics += [
        NewTopic(topo.updates_topic, k.partitions, rf, config=big),
        NewTopic(topo.models_topic, 1, rf, config={**big, "cleanup.policy": "compact"}),
        NewTopic(topo.lineage_topic, 1, rf),
        NewTopic(topo.rejected_topic, 1, rf, config=big),
        NewTopic(topo.dead_letter_topic, 1, rf, config=big),
    ]
    if topo.aggregation.secure is not None:
        # Recovery requests and reveals matter for one buffer only: a day of retention is plenty.
        topics.append(NewTopic(topo.secagg_topic, 1, rf, config={**big, "retention.ms": str(86_400_000)}))
    return topics


def provision_topology(topo: Topology, timeout_s: float = 30.0) -> list[str]:
    """Create every topic the topology uses; returns the names created now (existing ones are kept)."""
    admin = admin_client(topo.kafka)
    try:
        admin.list_topics(timeout=min(timeout_s, 15.0))
    except KafkaException as exc:
        raise BrokerError(f"no Kafka broker answers at {topo.kafka.bootstrap_servers}: {exc.args[0]}") from exc
    created = []
    futures = admin.create_topics(topic_plan(topo), operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, fut in futures.items():
        try:
            fut.result(timeout_s)
            created.append(name)
        except TimeoutError as exc:
            raise BrokerError(f"creating topic {name} timed out after {timeout_s:.0f} s") from exc
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"cannot create topic {name}: {err}") from exc
    wait_for_topics(topo, [t.topic for t in topic_plan(topo)], timeout_s)
    if created:
        log.info("created topics: %s", ", ".join(sorted(created)))
    return created


def wait_for_topics(topo: Topology, names: list[str], timeout_s: float = 30.0) -> None:
    admin = admin_client(topo.kafka)
    deadline = time.monotonic() + timeout_s
    missing = set(names)
    while missing and time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        missing = {n for n in names if n not in md.topics or md.topics[n].error is not None}
        if missing:
            time.sleep(0.1)
    if missing:
        raise BrokerError(f"topics not visible after {timeout_s:.0f} s: {', '.join(sorted(missing))}")
