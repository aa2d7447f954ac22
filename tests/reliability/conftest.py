"""Reliability tests: the quick subset runs everywhere; soak tests only with ``STREAMFED_SOAK=1``."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("STREAMFED_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: set STREAMFED_SOAK=1 to run it (minutes of load)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)
