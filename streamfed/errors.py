"""The exception hierarchy: one root, domain errors that wrap third-party ones."""

from __future__ import annotations


class StreamfedError(Exception):
    """Root of every error StreamFed raises on purpose."""


class ConfigError(StreamfedError):
    """A topology or command-line setting is invalid; the message names the field and the choices."""


class SchemaError(StreamfedError):
    """An Avro schema cannot be found or parsed."""


class SerializationError(StreamfedError):
    """A record or update does not decode, or does not validate against its schema and spec."""


class PrivacyBudgetExceeded(StreamfedError):
    """A release would take a site past its lifetime privacy budget."""


class AggregationError(StreamfedError):
    """The aggregator cannot turn updates into a model version."""


class BrokerError(StreamfedError):
    """The embedded broker cannot start, or a Kafka operation failed."""


class SignatureError(StreamfedError):
    """A signed update does not verify against the site's public key."""
