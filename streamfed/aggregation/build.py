"""Wire an Aggregator from a topology."""

from __future__ import annotations

import math

from streamfed.aggregation.aggregator import Aggregator, AggregatorTopics, ModelInfo
from streamfed.aggregation.fedbuff import FedBuff
from streamfed.aggregation.rules import make_rule
from streamfed.aggregation.secure import SecureBuffer
from streamfed.learners.model import SiteModel
from streamfed.privacy.accountant import resolve_noise_multiplier
from streamfed.privacy.secagg import secagg_params
from streamfed.privacy.signing import FileKeyring
from streamfed.serde.avro import default_registry
from streamfed.topology.spec import Topology


def max_update_norm(clip: float, sigma: float, dim: int) -> float:
    """A clipped delta plus N(0, (sigma C)^2 I) exceeds C (1 + sigma (sqrt(d) + 6)) with probability
    below exp(-18) (Gaussian norm concentration), so honest updates pass and scaled ones do not."""
    return clip * (1.0 + sigma * (math.sqrt(dim) + 6.0))


def build_aggregator(topo: Topology) -> Aggregator:
    model = SiteModel(topo.model, device="cpu")
    params = model.get_params()
    sigma = resolve_noise_multiplier(topo.privacy)
    limit = topo.aggregation.max_update_norm or max_update_norm(topo.privacy.clip_norm, sigma, params.size)
    info = ModelInfo(
        topology=topo.name,
        name=topo.model.name,
        layout=model.layout(),
        feature_order=model.featurizer.names,
        schema_fingerprint=default_registry().fingerprint(topo.model.record_schema),
        initial_params=params,
        delta=topo.privacy.delta,
        max_update_norm=limit,
        energy=topo.energy,
    )
    topics = AggregatorTopics(topo.updates_topic, topo.models_topic, topo.lineage_topic, topo.rejected_topic)
    verifier = FileKeyring({s.id: topo.public_key_path(s) for s in topo.sites})
    fedbuff = FedBuff(topo.aggregation, make_rule(topo.aggregation))
    secure = None
    if topo.aggregation.secure is not None:
        secure = SecureBuffer(secagg_params(topo), topo.aggregation.secure.dropout_timeout_seconds, verifier)
    return Aggregator(
        info,
        topo.aggregation,
        fedbuff,
        topo.kafka,
        topics,
        verifier,
        topo.home / "aggregator",
        secure=secure,
        secagg_topic=topo.secagg_topic,
    )

