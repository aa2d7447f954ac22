"""A thin layer over confluent-kafka: client settings from the topology, topic provisioning."""

from streamfed.kafka.clients import (
    admin_client,
    consumer_config,
    make_consumer,
    make_producer,
    producer_config,
)
from streamfed.kafka.topics import provision_topology, wait_for_topics

__all__ = [
    "admin_client",
    "consumer_config",
    "make_consumer",
    "make_producer",
    "producer_config",
    "provision_topology",
    "wait_for_topics",
]
