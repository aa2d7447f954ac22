"""The embedded Kafka-protocol broker for one-machine runs and tests."""

from streamfed.broker.embedded import EmbeddedBroker, tansu_binary

__all__ = ["EmbeddedBroker", "tansu_binary"]
