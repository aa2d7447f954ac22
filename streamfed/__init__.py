"""StreamFed: streaming-first federated learning on Kafka.

The public API is small; heavier modules load on first use so that ``streamfed --help`` is quick.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Aggregator", "ModelSubscriber", "Scorer", "SiteProcessor", "Topology", "__version__", "load_topology"]


def __getattr__(name: str) -> Any:
    if name in ("load_topology", "Topology"):
        from streamfed import topology

        return getattr(topology, name)
    if name == "SiteProcessor":
        from streamfed.site import SiteProcessor

        return SiteProcessor
    if name in ("ModelSubscriber", "Scorer"):
        from streamfed import serving

        return getattr(serving, name)
    if name == "Aggregator":
        from streamfed.aggregation.aggregator import Aggregator

        return Aggregator
    raise AttributeError(name)
