"""Consumer lag from the broker's own offsets: each group's committed offset against the partition's
end as a ``read_committed`` reader sees it (the last stable offset, so an open transaction is not
lag yet), by ``list_consumer_group_offsets`` and ``list_offsets``.

A group with no committed offset on a partition starts at its earliest offset
(``auto.offset.reset=earliest``), so its lag there is the whole retained log. Lag counts offsets:
on a transactional topic the commit markers and aborted records occupy offsets too.
The embedded tansu broker answers latest-offset queries wrongly (docs/architecture.md): these
figures are exact on Apache Kafka; the sites' ``streamfed_site_consumer_lag_records`` (librdkafka
statistics) is the figure to watch there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from streamfed.errors import BrokerError
from streamfed.kafka.clients import admin_client, aggregator_group, site_group
from streamfed.topology.spec import KafkaSpec, Topology


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group never committed on this partition
    start: int
    end: int  # the last stable offset (read_committed)

    @property
    def lag(self) -> int:
        position = self.start if self.committed is None else max(self.committed, self.start)
        return max(0, self.end - position)


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    partitions: tuple[PartitionLag, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        parts = [{**asdict(p), "lag": p.lag} for p in self.partitions]
        return {"group": self.group, "topic": self.topic, "lag": self.lag, "partitions": parts}


def _offsets(admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec, timeout_s: float) -> dict[int, int]:
    futures = admin.list_offsets(
        {tp: spec for tp in tps}, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout_s
    )
    return {tp.partition: int(fut.result(timeout_s).offset) for tp, fut in futures.items()}


def group_lag(kafka: KafkaSpec, group: str, topic: str, timeout_s: float = 10.0) -> GroupLag:
    """``group``'s lag on every partition of ``topic``; raises :class:`BrokerError`."""
    admin = admin_client(kafka)
    try:
        md = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            raise BrokerError(f"topic {topic} does not exist ({md.error if md else 'no metadata'})")
        tps = [TopicPartition(topic, p) for p in sorted(md.partitions)]
        start = _offsets(admin, tps, OffsetSpec.earliest(), timeout_s)
        end = _offsets(admin, tps, OffsetSpec.latest(), timeout_s)
        request = [ConsumerGroupTopicPartitions(group, tps)]
        got = admin.list_consumer_group_offsets(request, request_timeout=timeout_s)[group].result(timeout_s)
    except KafkaException as exc:
        raise BrokerError(f"cannot read the offsets of group {group} on {topic}: {exc}") from exc
    committed = {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in got.topic_partitions or []}
    parts = tuple(PartitionLag(p, committed.get(p), start[p], end[p]) for p in (tp.partition for tp in tps))
    return GroupLag(group, topic, parts)


def topology_lag(topo: Topology, timeout_s: float = 10.0) -> dict[str, GroupLag]:
    """Every site's processor on its transactions topic, and the aggregator on the updates topic."""
    out = {
        s.id: group_lag(topo.kafka, site_group(topo.name, s.id), topo.transactions_topic(s), timeout_s)
        for s in topo.sites
    }
    out["aggregator"] = group_lag(topo.kafka, aggregator_group(topo.name), topo.updates_topic, timeout_s)
    return out
