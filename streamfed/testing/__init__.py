"""Helpers for tests and simulations of *our* interfaces (no fakes of Kafka)."""
