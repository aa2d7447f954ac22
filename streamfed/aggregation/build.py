"""Wire an Aggregator from a topology."""

from __future__ import annotations

import math

from streamfed.aggregation.aggregator import Aggregator, AggregatorTopics
from streamfed.aggregation.fedbuff import FedBuff
from streamfed.aggregation.records import ModelInfo
from streamfed.aggregation.rules import make_rule
from streamfed.aggregation.secure import SecureBuffer
from streamfed.learners.federated import build_federated_model
from streamfed.privacy.accountant import Mechanism, resolve
from streamfed.privacy.secagg import secagg_params
from streamfed.privacy.signing import FileKeyring
from streamfed.serde.avro import default_registry
from streamfed.serving import scoring_doc
from streamfed.topology.spec import Topology


def max_update_norm(mech: Mechanism, learning_rate: float, examples: int, dim: int) -> float:
    """The largest L2 norm an honest update of ``examples`` slots can have, but for a probability below
    exp(-18).

    Each noised sum is at most ``n C`` (n clipped gradients) plus Gaussian noise whose norm exceeds
    ``sigma C (sqrt(d) + 6)`` with probability below ``exp(-18)``; a step divides it by the expected
    count (at least ``q examples``) and multiplies by the learning rate; ``dp_sgd`` takes ``steps``
    of them, a Poisson sample holding at most every pooled record (``n <= |pool|``).
    """
    noise = mech.noise_multiplier * mech.clip_norm * (math.sqrt(dim) + 6.0)
    q = mech.sampling_rate
    per_step = learning_rate * (mech.clip_norm / q + noise / (q * max(1, examples)))
    return per_step * mech.steps


def build_aggregator(topo: Topology) -> Aggregator:
    federated = build_federated_model(topo.model, device="cpu")
    params = federated.initial_params()
    mech, _ = resolve(topo.privacy)
    fixed = topo.aggregation.max_update_norm

    def limit(examples: int) -> float:
        return fixed or max_update_norm(mech, topo.update.learning_rate, examples, params.size)

    info = ModelInfo(
        topology=topo.name,
        name=topo.model.name,
        layout=federated.layout(),
        feature_order=topo.model.features.names(),
        schema_fingerprint=default_registry().fingerprint(topo.model.record_schema),
        initial_params=params,
        delta=topo.privacy.delta,
        max_update_norm=limit(topo.update.min_records),
        norm_limit=limit,
        energy=topo.energy,
        mechanism=mech.kind,
        noise_multiplier=mech.noise_multiplier,
        scoring=scoring_doc(topo.model),
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
