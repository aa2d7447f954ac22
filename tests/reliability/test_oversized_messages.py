"""A message the broker can never take does not hold up the ones behind it: the resilient producer
drops it (counted, logged) and delivers the rest; a site reports dead letters undelivered at shutdown."""

from __future__ import annotations

import pytest

from streamfed.kafka.resilient import ResilientProducer
from streamfed.kafka.topics import provision_topology

pytestmark = [pytest.mark.kafka, pytest.mark.reliability]


def test_an_oversized_message_is_refused_and_the_queue_goes_on(topology_factory) -> None:
    _, topo = topology_factory("fraud", {"kafka": {"max_message_bytes": 1 << 20}})
    provision_topology(topo)
    dropped: list[int] = []
    prod = ResilientProducer(topo.kafka, "test", max_in_flight=1, on_drop=lambda: dropped.append(1))
    topic = topo.dead_letter_topic
    prod.produce(topic, value=b"a" * 100)
    prod.produce(topic, value=b"x" * (2 << 20))  # twice the limit: librdkafka refuses it for good
    for i in range(50):
        prod.produce(topic, value=f"after {i}".encode())
    assert prod.flush(30) == 0
    assert (prod.delivered, prod.refused, prod.recreated) == (51, 1, 0)
    assert dropped == [1]
