"""Declarative topologies: frozen pydantic specs and the one loader that reads YAML."""

from streamfed.topology.loader import load_topology
from streamfed.topology.spec import (
    AggregationSpec,
    CategoricalFeature,
    DeepSpec,
    EnergySpec,
    FeatureSpec,
    KafkaSpec,
    MetricsSpec,
    ModelSpec,
    NumericFeature,
    OnlineSpec,
    PrivacySpec,
    SimulatorSpec,
    SiteSpec,
    SourceSpec,
    Topology,
    UpdateSpec,
)

__all__ = [
    "AggregationSpec",
    "CategoricalFeature",
    "DeepSpec",
    "EnergySpec",
    "FeatureSpec",
    "KafkaSpec",
    "MetricsSpec",
    "ModelSpec",
    "NumericFeature",
    "OnlineSpec",
    "PrivacySpec",
    "SimulatorSpec",
    "SiteSpec",
    "SourceSpec",
    "Topology",
    "UpdateSpec",
    "load_topology",
]
